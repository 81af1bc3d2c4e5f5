"""The one object every analysis receives: the merged events (collected once) and what the
capture says about the kernel."""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from kmltrace.analysis.events import (attribute_by_columns, attribute_in_place,
                                      available_events, overlapping_pairs, unmerged_events)
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


#: Tracepoint fields no analysis reads: left out of the analysis table to keep it small
#: (merged_events still has them for ingest and the TUI).
UNUSED_COLUMNS = {"flags", "prio", "prev_prio", "next_prio", "prev_state", "group_dead",
                  "target_comm", "target_pid", "parent_comm", "buf", "errno", "code", "group",
                  "result", "sa_handler", "sa_flags", "old_pid", "handler", "delta_ns",
                  "handled", "parent_ip", "name", "irq", "ret_irq"}
#: above this many events the analysis table is not collected (see Context.build)
IN_MEMORY_ROWS = 3_000_000


def analysis_table(events: pl.LazyFrame, keep_raw: bool) -> pl.LazyFrame:
    """The merged events as the analyses read them: unused fields dropped, ``raw`` only where
    kept (console lines are evidence of a KML boot)."""
    events = with_optional_columns(events)
    names = events.collect_schema().names()
    drop = [c for c in names if c in UNUSED_COLUMNS or c.startswith("field_")
            or (c == "raw" and not keep_raw)]
    return events.drop(drop)


@dataclass
class Context:
    capture: object
    events: pl.LazyFrame
    kernel: KernelInfo
    available_events: set[str] = field(default_factory=set)
    processes: pl.DataFrame | None = None      # filled by modes.process_modes

    @classmethod
    def build(cls, capture, events: pl.LazyFrame | None = None,
              unmerged: pl.LazyFrame | None = None) -> "Context":
        """Merge `capture` (or take already merged `events`, or `unmerged` conformed ones).

        A table that needed sorting, joining or deduplicating is collected once (up to
        IN_MEMORY_ROWS); one already in order, or a larger one, stays lazy, so that each
        analysis reads only its columns from the source (polars streams a parquet scan)
        instead of holding every column of every row.
        """
        tables = capture.table_events() if getattr(capture, "tables", None) else None
        keep_raw = any(p.format == "console" or "console" in
                       p.events.get_column("source").unique().to_list()
                       for p in capture.inputs if p.events.height)
        if tables is not None and not keep_raw:
            keep_raw = tables.select((pl.col("source") == "console").any()).collect().item()
        # work that would be repeated by every query (sorting, joining, dropping duplicates)
        # is done once, in memory; a table already in order is read lazily instead, each
        # query taking only its own columns (and rows, for a parquet scan)
        expensive = True
        if events is not None:
            table = analysis_table(events, keep_raw)
        else:
            raw = unmerged if unmerged is not None else unmerged_events(capture)
            table = analysis_table(raw, keep_raw)
            in_place = attribute_in_place(table)
            if in_place is not None:
                table = in_place
                expensive = bool(overlapping_pairs(capture))
            else:
                table = attribute_by_columns(table)
        if keep_raw:
            table = table.with_columns(
                pl.when(pl.col("source") == "console").then(pl.col("raw")).alias("raw"))
        rows = table.select(pl.len()).collect().item() if expensive else 0
        if not expensive or rows > IN_MEMORY_ROWS:
            lazy = table
        else:
            frame = table.collect()
            # columns without a value (a trace without QEMU records has no cpl, cs, ...) are
            # not kept as full null buffers: they come back as null literals in each query
            schema = frame.schema
            empty = [c for c in frame.columns
                     if frame.height and frame.get_column(c).null_count() == frame.height]
            lazy = frame.drop(empty).lazy().with_columns(
                [pl.lit(None, dtype=schema[c]).alias(c) for c in empty])
        return cls(capture=capture, events=lazy, kernel=kernel_info(capture, lazy),
                   available_events=available_events(lazy))

    def string_events(self) -> pl.LazyFrame:
        """The events as code outside the analysis package expects them (strings as String)."""
        return self.events

    def events_named(self, suffix: str) -> list[str]:
        """Event names present in the capture that end with `suffix` (e.g. "_entry")."""
        return sorted(e for e in self.available_events if ":" not in e and e.endswith(suffix))
