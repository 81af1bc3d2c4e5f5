"""The first screen: every incident of the capture, sortable and filterable."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Input, Label

from kmltrace.tui.base import KmlScreen, literal
from kmltrace.tui.incident_model import (INCIDENT_SORT_KEYS, filter_incidents, format_ts,
                                         sort_incidents)

SEVERITY_STYLE = {"critical": "bold red", "error": "red", "warning": "yellow", "info": "cyan"}


class IncidentsScreen(KmlScreen):
    BINDINGS = [
        Binding("s", "sort", "Sort", tooltip="Sort by the next column (severity, kind, time...)",
                id="incidents.sort"),
        Binding("r", "reverse", "Reverse", tooltip="Reverse the sort order",
                id="incidents.reverse"),
        Binding("f", "focus_filter", "Filter",
                tooltip="Filter: kind=K severity=S pid=N, other words match the summary",
                id="incidents.filter"),
        Binding("escape", "clear_filter", "Clear filter", show=False, id="incidents.clear_filter"),
    ]

    sort_key = "severity"
    reverse = False

    def body(self) -> ComposeResult:
        yield Input(placeholder="filter: kind=triple_fault severity=critical,error pid=42 text",
                    id="incident-filter")
        yield Label("", id="incident-count")
        table = DataTable(id="incidents", cursor_type="row", zebra_stripes=True)
        table.add_columns(*INCIDENT_SORT_KEYS)
        yield table

    def on_mount(self) -> None:
        self.query_one(DataTable).focus()
        super().on_mount()

    def show_data(self, loaded) -> None:
        self.redraw()

    @property
    def incidents(self) -> list[dict]:
        report = self.app.loaded.report
        return list(report.get("incidents") or []) if report else []

    def redraw(self) -> None:
        table = self.query_one(DataTable)
        table.clear()
        text = self.query_one("#incident-filter", Input).value
        shown = sort_incidents(filter_incidents(self.incidents, text), self.sort_key,
                               self.reverse)
        self._rows = shown
        for incident in shown:
            severity = str(incident.get("severity", ""))
            pid = incident.get("pid")
            table.add_row(
                Text(severity, style=SEVERITY_STYLE.get(severity, "")),
                literal(incident.get("kind", "")),
                Text(format_ts(incident.get("ts_ns"))),
                Text("" if pid is None else str(pid)),
                literal(incident.get("comm", "")),
                literal(incident.get("summary", "")),
            )
        total = len(self.incidents)
        if self.app.loaded.report is None:
            note = "analysing... (events are browsable with 4 as soon as they are merged)"
        elif total == 0:
            note = "no incidents found"
        else:
            arrow = "v" if self.reverse else "^"
            note = f"{len(shown)} of {total} incidents, sorted by {self.sort_key} {arrow}"
        self.query_one("#incident-count", Label).update(Text(note))

    def on_input_changed(self, event: Input.Changed) -> None:
        self.redraw()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.query_one(DataTable).focus()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        rows = getattr(self, "_rows", [])
        if 0 <= event.cursor_row < len(rows):
            from kmltrace.tui.incident_detail import IncidentDetailScreen
            self.app.push_screen(IncidentDetailScreen(rows[event.cursor_row]))

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        key = INCIDENT_SORT_KEYS[event.column_index]
        self.reverse = not self.reverse if key == self.sort_key else False
        self.sort_key = key
        self.redraw()

    def action_sort(self) -> None:
        i = INCIDENT_SORT_KEYS.index(self.sort_key)
        self.sort_key = INCIDENT_SORT_KEYS[(i + 1) % len(INCIDENT_SORT_KEYS)]
        self.redraw()

    def action_reverse(self) -> None:
        self.reverse = not self.reverse
        self.redraw()

    def action_focus_filter(self) -> None:
        self.query_one("#incident-filter", Input).focus()

    def action_clear_filter(self) -> None:
        self.query_one("#incident-filter", Input).value = ""
        self.query_one(DataTable).focus()
