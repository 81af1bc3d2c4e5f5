"""A virtual table over a polars DataFrame: only the rows on screen are formatted and drawn.

Textual's DataTable builds every row up front (seconds for tens of thousands); this widget
uses the line API (``ScrollView.render_line``) and formats rows in small cached blocks, so a
table of ten million events scrolls as fast as one of ten.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

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
BLOCK = 128            # rows formatted at a time (one page move needs at most two blocks)
CACHED_BLOCKS = 8
KIND = "__kind"
FAULT_EVENTS = ("page_fault_user", "page_fault_kernel")
EXCEPTION_EVENTS = ("exception", "triple_fault", "cpu_reset", "oops")


@dataclass(slots=True)
class _Block:
    """Rows start..start+len(cells) of the frame: the slice, its formatted cells, each row's
    kind and its joined line (filled when first drawn)."""
    start: int
    frame: pl.DataFrame
    cells: list[tuple[str, ...]]
    kinds: list[int]
    lines: list[str | None]


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
        self._blocks: OrderedDict[int, _Block] = OrderedDict()
        self._select: list[pl.Expr] | None = None
        if frame is not None:
            self.set_frame(frame)

    # -- data -------------------------------------------------------------------------------

    def set_frame(self, frame: pl.DataFrame, cursor: int = 0) -> None:
        self.frame = frame
        self.columns = [c for c in DEFAULT_COLUMNS if c[0] in frame.columns]
        if "line" not in frame.columns and "offset" in frame.columns:
            self.columns.append(("offset", "offset", 10))
        self._blocks.clear()
        self._select = None
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
        block = self._block(row)
        values = block.frame.row(row - block.start, named=True)
        return {k: v for k, v in values.items() if v is not None}

    def visible_text(self) -> list[str]:
        """The data rows as drawn now, for tests and benchmarks."""
        top = int(self.scroll_offset.y)
        height = max(0, self.size.height - 1)
        return [" ".join(self._cells(r)) for r in range(top, min(top + height, self.row_count))]

    @property
    def _block_rows(self) -> int:
        # a table read from disk pays per read, not per row: fetch more at once
        return BLOCK if isinstance(self.frame, pl.DataFrame) else BLOCK * 16

    def _expressions(self, chunk: pl.DataFrame) -> list[pl.Expr]:
        """The columns shown plus each row's kind (0 plain, 1 page fault, 2 exception)."""
        schema = chunk.collect_schema()
        if self._select is None:        # built once per frame
            kind = pl.lit(0, dtype=pl.Int8)
            if "event" in schema:
                event, fault = pl.col("event"), pl.col("event").is_in(FAULT_EVENTS)
                exception = event.is_in(EXCEPTION_EVENTS)
                if "vector" in schema:
                    fault = fault | (pl.col("vector") == 14).fill_null(False)
                    exception = exception | (pl.col("vector") < 32).fill_null(False)
                kind = pl.when(fault).then(1).when(exception).then(2).otherwise(0)
            self._select = [pl.col(c) for c, _, _ in self.columns] + \
                [kind.cast(pl.Int8).alias(KIND)]
        if "raw" not in [c for c, _, _ in self.columns]:
            return self._select
        # binary-decoded typed events carry no raw text: render it for these rows, from the
        # fields they use (a block holds few kinds of event; half the cost of all 30 fields)
        present = {n: d for n, d in schema.items() if chunk[n].null_count() < chunk.height}
        return [raw_text_expr(present) if e.meta.output_name() == "raw" else e
                for e in self._select]

    def _block(self, row: int) -> "_Block":
        """The formatted block holding `row` (a few blocks are kept, the least recent dropped)."""
        size = self._block_rows
        index = row // size
        block = self._blocks.get(index)
        if block is not None:
            self._blocks.move_to_end(index)
            return block
        start = index * size
        chunk = self.frame.slice(start, size)
        names = [c for c, _, _ in self.columns]
        data = chunk.select(self._expressions(chunk))
        kinds = data[KIND].to_list()
        cells = [tuple(format_cell(n, v) for n, v in zip(names, values))
                 for values in data.drop(KIND).rows()]
        block = self._blocks[index] = _Block(start, chunk, cells, kinds, [None] * len(cells))
        while len(self._blocks) > CACHED_BLOCKS:
            self._blocks.popitem(last=False)
        return block

    def _cells(self, row: int) -> tuple[str, ...]:
        block = self._block(row)
        return block.cells[row - block.start]

    def _prefetch(self) -> None:
        """Format the blocks a page up and a page down once the screen is drawn, so the next
        page move finds its rows ready."""
        if not self.row_count:
            return
        top, page = int(self.scroll_offset.y), self.page_rows
        for row in (top - page, top + 2 * page):
            if 0 <= row < self.row_count:
                self._block(row)

    # -- drawing ------------------------------------------------------------------------------

    def _joined(self, cells) -> str:
        parts = []
        for (_, _, width), text in zip(self.columns, cells):
            if len(text) > width:
                text = text[: width - 1] + "…"
            parts.append(text.ljust(width))
        return " ".join(parts) + " "

    def _line_text(self, row: int) -> tuple[str, int]:
        """The row as one pre-joined string (cached with its block) and its kind."""
        block = self._block(row)
        index = row - block.start
        line = block.lines[index]
        if line is None:
            line = block.lines[index] = self._joined(block.cells[index])
        return line, block.kinds[index]

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
            text, kind = self._line_text(row)
            key = ("odd" if row % 2 else "", kind,
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
        self.call_after_refresh(self._prefetch)

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
