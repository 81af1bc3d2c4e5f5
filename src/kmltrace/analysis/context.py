"""The one object every analysis receives: the merged events (collected once) and what the
capture says about the kernel."""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from kmltrace.analysis.events import available_events, merged_events
from kmltrace.analysis.kernel import KernelInfo, kernel_info

#: Columns analyses read beyond the core ones; absent ones are added as nulls so that
#: expressions need no per-source special cases.
OPTIONAL_COLUMNS: dict[str, pl.DataType] = {
    "id": pl.Int64, "args": pl.List(pl.UInt64), "ret": pl.Int64,
    "prev_pid": pl.Int32, "prev_comm": pl.String, "next_pid": pl.Int32, "next_comm": pl.String,
    "filename": pl.String, "parent_pid": pl.Int32, "child_pid": pl.Int32,
    "child_comm": pl.String, "sig": pl.Int32, "cpl": pl.Int32, "cs": pl.UInt64,
    "rsp": pl.UInt64, "cr2": pl.UInt64, "cpumode": pl.String,
}


def with_optional_columns(events: pl.LazyFrame) -> pl.LazyFrame:
    names = set(events.collect_schema().names())
    return events.with_columns([pl.lit(None, dtype=dtype).alias(name)
                                for name, dtype in OPTIONAL_COLUMNS.items() if name not in names])


@dataclass
class Context:
    capture: object
    events: pl.LazyFrame
    kernel: KernelInfo
    available_events: set[str] = field(default_factory=set)
    processes: pl.DataFrame | None = None      # filled by modes.process_modes

    @classmethod
    def build(cls, capture, events: pl.LazyFrame | None = None) -> "Context":
        """Merge `capture` once (or take already merged `events`) and keep it in memory."""
        if events is None:
            events = merged_events(capture)
        # the raw text is the largest column and no analysis needs it: evidence lines
        # point at file and line instead
        # point at file and line instead (console lines are kept: a KML boot line is evidence)
        frame = with_optional_columns(events).with_columns(
            pl.when(pl.col("source") == "console").then(pl.col("raw")).alias("raw")).collect()
        lazy = frame.lazy()
        return cls(capture=capture, events=lazy, kernel=kernel_info(capture, lazy),
                   available_events=available_events(lazy))
