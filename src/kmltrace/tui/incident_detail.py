"""One incident: summary, explanation, the exception chain as a diagram, the evidence."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Label, Static

from kmltrace.formats.raw_text import with_raw_text
from kmltrace.tui.base import KmlScreen, literal
from kmltrace.tui.incidents import SEVERITY_STYLE
from kmltrace.tui.incident_model import (chain_ends_in_reset, format_ts, incident_chain,
                                         vector_name)
from kmltrace.tui.model import find_event_row

STACK_STYLE = {"same": "bold red", "rsp0": "green", None: "dim"}


def chain_diagram(chain: list[dict], reset: bool) -> Text:
    """The exceptions of a chain one under the other, each with vector, CPL, RIP (symbol),
    RSP and the stack it landed on, joined by arrows; then the reset when there was one."""
    out = Text()
    if not chain:
        out.append("no exception chain recorded for this incident\n", style="dim")
        return out
    for i, exc in enumerate(chain):
        name = exc.get("name") or vector_name(exc.get("vector"))
        out.append(f" {name:<4}", style="bold")
        out.append(f" vec {exc.get('vector', '?'):>2}  CPL {exc.get('cpl', '?')}  stack ")
        stack = exc.get("stack")
        out.append(str(stack or "?"), style=STACK_STYLE.get(stack, "magenta"))
        if exc.get("delivered") is False:
            out.append("  not delivered", style="bold red")
        if exc.get("shutdown"):
            out.append("  -> shutdown", style="bold red")
        if exc.get("ts_ns") is not None:
            out.append(f"  @{format_ts(exc['ts_ns'])}", style="dim")
        out.append("\n      rip ")
        out.append(str(exc.get("rip") or "?"), style="cyan")
        if exc.get("symbol"):
            out.append(" <")
            out.append(literal(exc["symbol"], style="cyan"))
            out.append(">")
        out.append(f"  rsp {exc.get('rsp') or '?'}")
        if exc.get("cr2"):
            out.append(f"  cr2 {exc['cr2']}")
        if exc.get("error_code"):
            out.append(f"  err {exc['error_code']}")
        out.append("\n")
        if i < len(chain) - 1 or reset:
            out.append("   │\n   ▼\n", style="dim")
    if reset:
        out.append(" RESET", style="bold white on red")
        out.append("  the CPU shut down (triple fault)\n")
    return out


class IncidentDetailScreen(KmlScreen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", id="incident_detail.back"),
        Binding("j", "jump", "Jump to event", tooltip="Open the selected evidence row's event",
                id="incident_detail.jump_to_event"),
    ]

    def __init__(self, incident: dict) -> None:
        super().__init__()
        self.incident = incident

    def body(self) -> ComposeResult:
        with VerticalScroll(id="detail"):
            yield Label(id="detail-title")
            yield Static(id="detail-summary")
            yield Static(id="detail-explanation")
            yield Label(Text("Exception chain", style="bold underline"))
            yield Static(id="detail-chain")
        # outside the scroll: focusing the evidence must not scroll the summary away
        yield Label(Text("Evidence (Enter or j: jump to the event)", style="bold underline"),
                    id="evidence-title")
        table = DataTable(id="evidence", cursor_type="row")
        table.add_columns("source", "line", "text")
        yield table

    def on_mount(self) -> None:
        self.query_one("#evidence", DataTable).focus()
        super().on_mount()

    def show_data(self, loaded) -> None:
        inc = self.incident
        severity = str(inc.get("severity", ""))
        title = Text()
        title.append(severity.upper(), style=SEVERITY_STYLE.get(severity, ""))
        title.append("  ")
        title.append(literal(inc.get("kind", ""), style="bold"))
        for key in ("pid", "comm", "cpu"):
            if inc.get(key) is not None:
                title.append(f"  {key} ")
                title.append(literal(inc[key]))
        if inc.get("ts_ns") is not None:
            title.append(f"  at {format_ts(inc['ts_ns'])}")
        self.query_one("#detail-title", Label).update(title)
        self.query_one("#detail-summary", Static).update(literal(inc.get("summary", "")))
        explanation = inc.get("explanation") or ""
        shown = self.query_one("#detail-explanation", Static)
        shown.update(literal(explanation, style="italic"))
        shown.display = bool(explanation)
        report = loaded.report or {}
        chain = incident_chain(report, inc)
        self.query_one("#detail-chain", Static).update(
            chain_diagram(chain, chain_ends_in_reset(inc, chain)))
        table = self.query_one("#evidence", DataTable)
        table.clear()
        self._evidence = list(inc.get("evidence") or [])
        for ev in self._evidence:
            line = ev.get("line", ev.get("offset"))
            text = ev.get("text") or self.event_text(loaded, ev)
            table.add_row(literal(ev.get("source", "")),
                          Text("" if line is None else str(line)), literal(text))

    @staticmethod
    def event_text(loaded, evidence: dict) -> str:
        """Evidence without text of its own shows its event's raw text ."""
        if loaded.events is None or "raw" not in loaded.events.columns:
            return ""
        row = find_event_row(loaded.events, evidence)
        if row is None:
            return ""
        # binary-decoded typed events carry no raw text: render it from their columns
        text = with_raw_text(loaded.events.slice(row, 1))["raw"][0]
        return " ".join(str(text or "").split())

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_jump()

    def action_jump(self) -> None:
        table = self.query_one("#evidence", DataTable)
        rows = getattr(self, "_evidence", [])
        if 0 <= table.cursor_row < len(rows):
            self.app.jump_to_evidence(rows[table.cursor_row])
