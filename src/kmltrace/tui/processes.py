"""Processes: mode (kernel/user/kthread) with its evidence, counts, page-fault rate."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import DataTable, Label, Sparkline, Static

from kmltrace.tui.base import KmlScreen, literal
from kmltrace.tui.model import clip_buckets, fault_counts, sparkline

MODE_STYLE = {"kernel": "bold magenta", "user": "green", "kthread": "dim", "unknown": "yellow"}
BUCKETS = 32


def count(value) -> str:
    return "" if value is None else f"{value:,}" if isinstance(value, int) else str(value)


class ProcessesScreen(KmlScreen):
    def body(self) -> ComposeResult:
        table = DataTable(id="processes", cursor_type="row", zebra_stripes=True)
        table.add_columns("pid", "tgid", "comm", "mode", "events", "syscalls", "page faults",
                          "fault rate", "exe")
        yield table
        yield Label("", id="process-title")
        yield Sparkline([], id="process-sparkline")
        yield Static("", id="process-evidence")

    def on_mount(self) -> None:
        self.query_one(DataTable).focus()
        super().on_mount()

    def show_data(self, loaded) -> None:
        report = loaded.report or {}
        self._processes = list(report.get("processes") or [])
        events = loaded.events
        self._rates = fault_counts(events, BUCKETS) if events is not None else {}
        table = self.query_one(DataTable)
        table.clear()
        for proc in self._processes:
            mode = str(proc.get("mode", "unknown"))
            rates = self.rates_of(proc)
            table.add_row(
                Text(str(proc.get("pid", ""))),
                Text(str(proc.get("tgid", "") if proc.get("tgid") is not None else "")),
                literal(proc.get("comm", "")),
                Text(mode, style=MODE_STYLE.get(mode, "")),
                Text(count(proc.get("events"))),
                Text(count(proc.get("syscalls"))),
                Text(count(proc.get("page_faults", sum(rates)))),
                Text(sparkline(rates), style="yellow"),
                literal(proc.get("exe") or ""),
            )
        if not self._processes:
            note = "analysing..." if loaded.report is None else "no processes in this capture"
            self.query_one("#process-title", Label).update(Text(note))
        else:
            self.show_process(0)

    def rates_of(self, proc: dict) -> list[int]:
        rates = self._rates.get(proc.get("pid"), [0] * BUCKETS)
        events = self.app.loaded.events
        if events is None:
            return rates
        return clip_buckets(rates, events, proc.get("first_ts_ns"), proc.get("last_ts_ns"))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.show_process(event.cursor_row)

    def show_process(self, index: int) -> None:
        procs = getattr(self, "_processes", [])
        if not 0 <= index < len(procs):
            return
        proc = procs[index]
        title = Text("page faults over the capture: ", style="bold")
        title.append(literal(proc.get("comm", "")))
        title.append(f" (pid {proc.get('pid')})")
        self.query_one("#process-title", Label).update(title)
        self.query_one(Sparkline).data = [float(v) for v in self.rates_of(proc)]
        evidence = Text("mode evidence:\n", style="bold")
        for item in proc.get("evidence") or []:
            evidence.append("  - ")
            evidence.append(literal(item if isinstance(item, str) else
                                    item.get("text", item) if isinstance(item, dict) else item))
            evidence.append("\n")
        self.query_one("#process-evidence", Static).update(evidence)
