"""Every row of the event table, virtualised, with filter, incremental search and go-to-time."""

from __future__ import annotations

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import Input, Label

from kmltrace.tui.base import KmlScreen
from kmltrace.tui.model import (apply_filter, find_event_row, parse_time, row_at_time,
                                search_row)
from kmltrace.tui.table import EventTable, format_cell

PROMPTS = {
    "filter": "filter: event=sys_enter pid=42 cpu=0,1 time=1.5..2 and/or SQL (vector = 14)",
    "search": "search: text in comm, event or detail (n / N: next / previous)",
    "goto": "go to time: seconds (12.5) or nanoseconds (12500000000ns)",
}


class RowDetail(Widget):
    """Every field of the row under the cursor. Redrawn without a layout pass (a Static's
    update lays the whole screen out again, on every cursor move)."""

    text: reactive[Text] = reactive(Text, layout=False)

    def render(self) -> Text:
        return self.text


class EventsScreen(KmlScreen):
    BINDINGS = [
        Binding("f", "prompt('filter')", "Filter", tooltip=PROMPTS["filter"], id="events.filter"),
        Binding("slash", "prompt('search')", "Search", tooltip=PROMPTS["search"],
                id="events.search"),
        Binding("n", "search_next(1)", "Next match", id="events.next_match"),
        Binding("N", "search_next(-1)", "Prev match", key_display="N", id="events.prev_match"),
        Binding("g", "prompt('goto')", "Go to time", tooltip=PROMPTS["goto"],
                id="events.go_to_time"),
        Binding("escape", "close_prompt", "Close", show=False, id="events.close"),
    ]

    prompt_kind: str | None = None
    filter_text = ""
    search_text = ""
    _search_timer = None

    def body(self) -> ComposeResult:
        yield Label("", id="events-count")
        yield Input(id="events-prompt")
        yield EventTable(id="events")
        yield RowDetail(id="event-detail")

    def on_mount(self) -> None:
        self.query_one("#events-prompt", Input).display = False
        self.query_one(EventTable).focus()
        super().on_mount()

    @property
    def table(self) -> EventTable:
        return self.query_one(EventTable)

    def show_data(self, loaded) -> None:
        # the whole table replacing its preview keeps the place the user is looking at
        self.apply(self.filter_text, 0 if self.filter_text else self.table.cursor_row)

    def sync(self) -> None:
        super().sync()
        if self.app.pending_jump is not None and self.app.loaded.events is not None:
            self.app.take_jump(self)

    def all_events(self):
        import polars as pl
        events = self.app.loaded.events
        return events if events is not None else pl.DataFrame()

    def reading(self) -> bool:
        """True while only a preview of an ingested table is shown (no filter/search yet)."""
        if self.app.loaded.events is None and self.app.loaded.preview is not None:
            self.app.report_error("the event table is still being read: filter, search and "
                                  "go-to-time work once it is")
            return True
        return False

    def apply(self, text: str, cursor: int = 0) -> bool:
        loaded = self.app.loaded
        if loaded.events is None and loaded.preview is not None:
            if text and self.reading():
                return False
            self.table.set_frame(loaded.preview, cursor)
            self.update_count()
            return True
        try:
            frame = apply_filter(self.all_events(), text) if text else self.all_events()
        except ValueError as e:
            self.app.report_error(str(e))
            return False
        self.filter_text = text
        self.table.set_frame(frame, cursor)
        self.update_count()
        return True

    def update_count(self) -> None:
        if self.app.loaded.events is None and self.app.loaded.preview is not None:
            self.query_one("#events-count", Label).update(Text(
                f"{self.app.loaded.preview.height:,} events (reading the whole table...)"))
            return
        total = self.all_events().height
        shown = self.table.row_count
        text = f"{shown:,} of {total:,} events" if self.filter_text else f"{total:,} events"
        if self.filter_text:
            text += f"  filter: {self.filter_text}"
        if self.app.loaded.events is None:
            text = "merging events..."
        self.query_one("#events-count", Label).update(Text(text))

    # -- prompts ----------------------------------------------------------------------------

    def action_prompt(self, kind: str) -> None:
        prompt = self.query_one("#events-prompt", Input)
        self.prompt_kind = kind
        prompt.placeholder = PROMPTS[kind]
        prompt.value = {"filter": self.filter_text, "search": self.search_text}.get(kind, "")
        prompt.display = True
        prompt.focus()

    def action_close_prompt(self) -> None:
        prompt = self.query_one("#events-prompt", Input)
        prompt.display = False
        self.prompt_kind = None
        self.table.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if self.prompt_kind == "search" and event.value and self.app.loaded.events is not None:
            self.search_text = event.value
            # wait for a pause in typing: a search of millions of rows runs in a thread that
            # cannot be stopped, so one per keystroke would pile up
            if self._search_timer is not None:
                self._search_timer.stop()
            self._search_timer = self.set_timer(
                0.25, lambda value=event.value, row=self.table.cursor_row:
                self.run_search(value, row, False))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        kind, value = self.prompt_kind, event.value.strip()
        if kind == "filter":
            if not self.apply(value):
                return
        elif value and self.reading():
            pass
        elif kind == "goto" and value:
            try:
                ts = parse_time(value)
            except ValueError as e:
                self.app.report_error(str(e))
                return
            row = row_at_time(self.table.frame, ts)
            if row is None:
                self.app.report_error(f"no event at or after {value}")
            else:
                self.table.move_to(row, center=True)
        elif kind == "search" and value:
            self.search_text = value      # the incremental search may already stand on a match
            if self._search_timer is not None:
                self._search_timer.stop()
            self.run_search(value, self.table.cursor_row, False)
        self.action_close_prompt()

    # -- search -------------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="search", exit_on_error=False)
    def run_search(self, text: str, start: int, backwards: bool) -> None:
        frame = self.table.frame
        row = search_row(frame, text, start, backwards)
        self.app.call_from_thread(self._found, text, row)

    def _found(self, text: str, row: int | None) -> None:
        if row is None:
            self.notify(f"not found: {text}", severity="warning", markup=False)
        else:
            self.table.move_to(row, center=True)

    def action_search_next(self, direction: int) -> None:
        if not self.search_text:
            self.action_prompt("search")
            return
        if self.reading():
            return
        start = self.table.cursor_row + direction
        self.run_search(self.search_text, start, direction < 0)

    # -- rows -----------------------------------------------------------------------------------

    def on_event_table_cursor_moved(self, message: EventTable.CursorMoved) -> None:
        self.show_row(message.row)

    def on_event_table_selected(self, message: EventTable.Selected) -> None:
        self.show_row(message.row, full=True)

    def show_row(self, row: int, full: bool = False) -> None:
        values = self.table.row_dict(row)
        text = Text()
        for key, value in values.items():
            text.append(f"{key}=", style="bold")
            text.append(format_cell(key, value))
            text.append("  ")
        detail = self.query_one("#event-detail", RowDetail)
        detail.text = text
        if full:
            detail.add_class("full")

    def jump(self, evidence: dict) -> bool:
        """Show the event an evidence entry points at (the filter is cleared if it hides it)."""
        row = find_event_row(self.table.frame, evidence)
        if row is None and self.filter_text:
            self.apply("")
            row = find_event_row(self.table.frame, evidence)
        if row is None:
            self.app.report_error("this evidence has no matching row in the event table")
            return False
        self.table.move_to(row, center=True)
        self.table.focus()
        return True
