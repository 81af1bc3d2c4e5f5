"""EventTable on its own: rows formatted in cached blocks must be the frame's rows, across
block boundaries and after the cache dropped a block (synthetic frame, labelled as such)."""

from __future__ import annotations

import polars as pl
from textual.app import App, ComposeResult

from kmltrace.tui import table as table_module
from kmltrace.tui.table import EventTable
from tests.tui.screen_text import sync

ROWS = 1000


def synthetic_frame() -> pl.DataFrame:
    # synthetic: row i at i microseconds, pid 1000+i; every 7th row a page fault (vector 14),
    # every 11th an exception (#GP, vector 13)
    vector = [14 if i % 7 == 0 else 13 if i % 11 == 0 else None for i in range(ROWS)]
    return pl.DataFrame({
        "ts_ns": [1_000_000_000 + i * 1000 for i in range(ROWS)],
        "cpu": [i % 2 for i in range(ROWS)],
        "pid": [1000 + i for i in range(ROWS)],
        "comm": [f"task{i}" for i in range(ROWS)],
        "event": ["exception" if v is not None else "sys_enter" for v in vector],
        "vector": pl.Series(vector, dtype=pl.UInt8),
        "raw": [f"row {i}" for i in range(ROWS)],
    })


class TableApp(App):
    def compose(self) -> ComposeResult:
        yield EventTable(synthetic_frame())


@sync
async def test_rows_across_blocks_are_the_frame_rows():
    app = TableApp()
    async with app.run_test(size=(120, 20)) as pilot:
        table = app.query_one(EventTable)
        block = table_module.BLOCK
        # visit more blocks than are cached, then come back to the first ones
        targets = [block - 1, block, block + 1, 3 * block + 5, ROWS - 1,
                   *range(0, ROWS, block), 2, block]
        for row in targets:
            table.move_to(row, center=True)
            await pilot.pause()
            assert table.row_dict(row)["pid"] == 1000 + row
            top = int(table.scroll_offset.y)
            for offset, line in enumerate(table.visible_text()):
                i = top + offset
                assert line.split()[:3] == ["1.%09d" % (i * 1000), str(i % 2), str(1000 + i)]
                assert line.endswith(f"row {i}")
        assert len(table._blocks) <= table_module.CACHED_BLOCKS


@sync
async def test_fault_and_exception_rows_are_coloured():
    app = TableApp()
    async with app.run_test(size=(120, 20)) as pilot:
        table = app.query_one(EventTable)
        table.move_to(300, center=True)     # the cursor row (300) is neither kind
        await pilot.pause()
        top = int(table.scroll_offset.y)
        fault = table._style(("", 1, "")).color
        exception = table._style(("", 2, "")).color
        plain = table._style(("", 0, "")).color
        assert fault != plain and exception != plain
        for y in range(1, table.page_rows + 1):
            row = top + y - 1
            if row == 300 or row % 2:
                continue
            color = table.render_line(y)._segments[0].style.color
            expected = fault if row % 7 == 0 else exception if row % 11 == 0 else plain
            assert color == expected, row
