"""A virtual table over a polars DataFrame: only the rows on screen are formatted and drawn.

Textual's DataTable builds every row up front (seconds for tens of thousands); this widget
uses the line API (``ScrollView.render_line``) and formats one cached page at a time, so a
table of ten million events scrolls as fast as one of ten.
"""

from __future__ import annotations

import polars as pl
from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from kmltrace.formats.raw_text import raw_text_expr
from kmltrace.output import safe_text
from kmltrace.tui.incident_model import format_ts, vector_name

#: (column, header, width); columns absent from the frame are left out
DEFAULT_COLUMNS = [
    ("ts_ns", "time", 18),
    ("cpu", "cpu", 3),
    ("pid", "pid", 7),
    ("comm", "comm", 16),
    ("source", "source", 7),
    ("event", "event", 20),
    ("vector", "vec", 4),
    ("ip", "ip", 18),
    ("address", "address", 18),
    ("raw", "detail", 60),
    ("line", "line", 8),
]

HEX_COLUMNS = {"ip", "address", "error_code", "cs", "ss", "rsp", "cr2", "handler",
               "parent_ip", "sa_handler", "sa_flags"}
PAGE = 256


def format_cell(column: str, value) -> str:
    """One value as the table shows it; kernel strings are escaped, never interpreted."""
    if value is None:
        return ""
    if column == "ts_ns":
        return format_ts(value)
    if column == "vector":
        return vector_name(value)
    if column in HEX_COLUMNS:
        return f"{int(value) & 0xFFFFFFFFFFFFFFFF:#x}"
    if isinstance(value, list):
        return " ".join(format_cell(column, v) for v in value)
    return safe_text(value)


class EventTable(ScrollView, can_focus=True):
    """Rows of an event table; the header stays on top, the cursor row is highlighted."""

    COMPONENT_CLASSES = {"eventtable--header", "eventtable--cursor", "eventtable--odd",
                         "eventtable--fault", "eventtable--exception"}
    DEFAULT_CSS = """
    EventTable { background: $surface; }
    EventTable > .eventtable--header { background: $primary-muted; text-style: bold; }
    EventTable > .eventtable--cursor { background: $accent; color: $text; }
    EventTable > .eventtable--odd { background: $surface-lighten-1; }
    EventTable > .eventtable--fault { color: $warning; }
    EventTable > .eventtable--exception { color: $error; text-style: bold; }
    """
    BINDINGS = [
        Binding("up", "cursor(-1)", "Up", show=False, id="event_table.up"),
        Binding("down", "cursor(1)", "Down", show=False, id="event_table.down"),
        Binding("pageup", "page(-1)", "Page up", show=False, id="event_table.page_up"),
        Binding("pagedown", "page(1)", "Page down", show=False, id="event_table.page_down"),
        Binding("home", "edge(0)", "First", show=False, id="event_table.first"),
        Binding("end", "edge(1)", "Last", show=False, id="event_table.last"),
        Binding("enter", "select", "Details", show=False, id="event_table.details"),
    ]

    cursor_row: reactive[int] = reactive(0, repaint=False)

    class CursorMoved(Message):
        def __init__(self, table: "EventTable", row: int) -> None:
            super().__init__()
            self.table = table
            self.row = row

    class Selected(Message):
        def __init__(self, table: "EventTable", row: int) -> None:
            super().__init__()
            self.table = table
            self.row = row

    def __init__(self, frame: pl.DataFrame | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.frame = pl.DataFrame()
        self.columns: list[tuple[str, str, int]] = []
        self._page_start = -1
        self._page: list[tuple[str, ...]] = []
        self._kinds: list[int] = []
        self._lines: list[str | None] = []
        if frame is not None:
            self.set_frame(frame)

    # -- data -------------------------------------------------------------------------------

    def set_frame(self, frame: pl.DataFrame, cursor: int = 0) -> None:
        self.frame = frame
        self.columns = [c for c in DEFAULT_COLUMNS if c[0] in frame.columns]
        if "line" not in frame.columns and "offset" in frame.columns:
            self.columns.append(("offset", "offset", 10))
        self._page_start, self._page, self._kinds, self._lines = -1, [], [], []
        width = sum(w + 1 for _, _, w in self.columns)
        self.virtual_size = Size(width, frame.height + 1)
        self.set_reactive(EventTable.cursor_row, 0)
        self.move_to(cursor)
        self.refresh()

    @property
    def row_count(self) -> int:
        return self.frame.height

    def row_dict(self, row: int) -> dict:
        """Every non-null column of `row` (for the detail pane)."""
        if not 0 <= row < self.frame.height:
            return {}
        return {k: v for k, v in self.frame.row(row, named=True).items() if v is not None}

    def visible_text(self) -> list[str]:
        """The data rows as drawn now, for tests and benchmarks."""
        top = int(self.scroll_offset.y)
        height = max(0, self.size.height - 1)
        return [" ".join(self._cells(r)) for r in range(top, min(top + height, self.row_count))]

    def _load_page(self, row: int) -> None:
        # a table read from disk pays per read, not per row: fetch more at once
        size = PAGE if isinstance(self.frame, pl.DataFrame) else PAGE * 16
        start = max(0, row - size // 4)
        chunk = self.frame.slice(start, size)
        names = [c for c, _, _ in self.columns]
        # binary-decoded typed events carry no raw text: render it for the rows shown
        data = chunk.select([raw_text_expr(chunk.collect_schema()) if n == "raw" else n
                             for n in names]).rows()
        self._page = [tuple(format_cell(n, v) for n, v in zip(names, values)) for values in data]
        kinds = []
        if "event" in chunk.columns:
            vec = chunk["vector"].to_list() if "vector" in chunk.columns else [None] * chunk.height
            for event, vector in zip(chunk["event"].to_list(), vec):
                if event in ("page_fault_user", "page_fault_kernel") or vector == 14:
                    kinds.append(1)
                elif event in ("exception", "triple_fault", "cpu_reset", "oops") or \
                        (vector is not None and vector < 32):
                    kinds.append(2)
                else:
                    kinds.append(0)
        else:
            kinds = [0] * chunk.height
        self._kinds = kinds
        self._lines: list[str | None] = [None] * len(self._page)
        self._page_start = start

    def _cells(self, row: int) -> tuple[str, ...]:
        if not (self._page_start <= row < self._page_start + len(self._page)):
            self._load_page(row)
        return self._page[row - self._page_start]

    # -- drawing ------------------------------------------------------------------------------

    def _joined(self, cells) -> str:
        parts = []
        for (_, _, width), text in zip(self.columns, cells):
            if len(text) > width:
                text = text[: width - 1] + "…"
            parts.append(text.ljust(width))
        return " ".join(parts) + " "

    def _line_text(self, row: int) -> str:
        cells = self._cells(row)
        index = row - self._page_start
        line = self._lines[index]
        if line is None:
            line = self._lines[index] = self._joined(cells)
        return line

    def notify_style_update(self) -> None:
        self._styles = {}
        super().notify_style_update()

    def _style(self, key: tuple) -> Style:
        """The rich Style of a line kind (header, odd, fault, exception, cursor), cached:
        computing styles from CSS on every line is what makes paging slow."""
        styles = self.__dict__.setdefault("_styles", {})
        style = styles.get(key)
        if style is None:
            style = self.rich_style
            names = {"header": "eventtable--header", "odd": "eventtable--odd",
                     1: "eventtable--fault", 2: "eventtable--exception",
                     "cursor": "eventtable--cursor"}
            for part in key:
                if part in names:
                    style += self.get_component_rich_style(names[part])
            styles[key] = style
        return style

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.size.width
        if y == 0:
            style = self._style(("header",))
            text = self._joined([h for _, h, _ in self.columns])
        else:
            row = int(scroll_y) + y - 1
            if row >= self.row_count:
                return Strip.blank(width, self._style(()))
            text = self._line_text(row)
            key = ("odd" if row % 2 else "", self._kinds[row - self._page_start],
                   "cursor" if row == self.cursor_row else "")
            style = self._style(key)
        return Strip([Segment(text, style)]).crop(scroll_x, scroll_x + width) \
            .extend_cell_length(width, style)

    # -- moving --------------------------------------------------------------------------------

    @property
    def page_rows(self) -> int:
        return max(1, self.size.height - 1)

    def move_to(self, row: int, center: bool = False) -> None:
        """Put the cursor on `row` (clamped) and scroll it into view."""
        if self.row_count == 0:
            self.cursor_row = 0
            return
        row = max(0, min(row, self.row_count - 1))
        self.cursor_row = row
        if self.size.height == 0:      # not laid out yet: scroll once the size is known
            self.call_after_refresh(self._scroll_to_cursor, center)
        else:
            self._scroll_to_cursor(center)
        self.refresh()
        self.post_message(self.CursorMoved(self, row))

    def _scroll_to_cursor(self, center: bool) -> None:
        row, top, page = self.cursor_row, int(self.scroll_offset.y), self.page_rows
        if center:
            self.scroll_to(y=max(0, row - page // 2), animate=False, immediate=True)
        elif row < top:
            self.scroll_to(y=row, animate=False, immediate=True)
        elif row >= top + page:
            self.scroll_to(y=row - page + 1, animate=False, immediate=True)
        self.refresh()

    def action_cursor(self, delta: int) -> None:
        self.move_to(self.cursor_row + delta)

    def action_page(self, direction: int) -> None:
        page = self.page_rows
        top = int(self.scroll_offset.y)
        self.scroll_to(y=max(0, top + direction * page), animate=False, immediate=True)
        self.move_to(self.cursor_row + direction * page)

    def action_edge(self, end: int) -> None:
        self.move_to(self.row_count - 1 if end else 0)

    def action_select(self) -> None:
        if self.row_count:
            self.post_message(self.Selected(self, self.cursor_row))

    def on_click(self, event) -> None:
        if event.y >= 1:
            self.move_to(int(self.scroll_offset.y) + event.y - 1)
            if event.chain >= 2:
                self.action_select()
