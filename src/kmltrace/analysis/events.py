"""Merge every input's events into one table: time order, duplicates counted once, and each
event attributed to the task that was on its CPU.

Columns added to the event table:

- ``row``       position in the merged table (evidence can point at it),
- ``task_pid``, ``task_comm``: the task on the CPU when the event happened: the event's own
  pid where the source records the current task (ftrace, perf), otherwise the ``next_pid`` of
  the last ``sched_switch`` on that CPU (a QEMU or KVM record carries no pid),
- ``image``     how many ``sched_process_exec`` the task had done before (0 = the image the
  capture first saw): one process row per exec image, so a fork child that execs into
  ``/trusted`` is a user row (before) and a kernel row (after).
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from kmltrace.capture import Capture
from kmltrace.schema import SCHED_PROCESS_EXEC, SCHED_SWITCH, conform, empty_events

#: Sources whose records of one run can be the same events twice; the first is preferred
#: (its records carry every field of the tracepoint).
DEDUPE_SOURCES = ("ftrace", "perf")
#: Text traces print microseconds: two records are the same event when pid, cpu and event
#: match within this window.
DEDUPE_PRECISION_NS = 1000


@dataclass
class MergeNote:
    """Which of two inputs of the same run was counted, how many duplicates were dropped, and
    how the other input's clock was aligned (perf's clock can differ from the trace clock)."""

    counted: str
    counted_source: str
    dropped_from: str
    dropped_source: str
    duplicates: int
    clock_offset_ns: int = 0
    anchors: int = 0

    def to_json(self) -> dict:
        return {"counted": self.counted, "counted_source": self.counted_source,
                "dropped_from": self.dropped_from, "dropped_source": self.dropped_source,
                "duplicates": self.duplicates, "clock_offset_ns": self.clock_offset_ns,
                "anchors": self.anchors}


@dataclass
class _Pair:
    primary: object
    secondary: object
    offset_ns: int      # add to the secondary's ts_ns to get the primary's clock
    anchors: int


def merged_events(capture: Capture) -> pl.LazyFrame:
    """All events of `capture`, deduplicated, sorted and attributed (see module docstring).

    Timed rows come first in ``ts_ns`` order (``seq`` breaks ties within a file); rows of
    sources without time (a QEMU log) follow in their own ``seq`` order, file by file.
    """
    return attribute(unmerged_events(capture))


def unmerged_events(capture: Capture) -> pl.LazyFrame:
    """All inputs' events with duplicates dropped, not yet sorted or attributed."""
    frames = _deduplicated(capture)
    tables = capture.table_events() if getattr(capture, "tables", None) else None
    if tables is not None:      # parquet TARGETs (kmltrace ingest): a lazy scan, never read
        frames.append(tables)
    if not frames:
        frames = [empty_events().lazy()]
    return conform(pl.concat(frames, how="diagonal_relaxed"))


#: the columns attribution adds
ATTRIBUTION_OUTPUT = ("row", "task_pid", "task_comm", "image")
#: the columns attribution reads
ATTRIBUTION_COLUMNS = ("ts_ns", "file", "seq", "cpu", "pid", "comm", "event", "next_pid",
                       "next_comm")


#: (pid, row) packed in one Int64 key: pids are below 2**22, rows below 2**40
_PID_KEY = 1 << 40


def attribute_in_place(events: pl.LazyFrame) -> pl.LazyFrame | None:
    """The attribution columns as plain expressions, when the table is already in time order
    and every row has its pid (ftrace, perf, an ingested table): nothing is joined, so a
    filter later in a query still reaches the parquet reader."""
    unsorted, untimed, pidless = events.select(
        (pl.col("ts_ns").drop_nulls().diff() < 0).any().alias("unsorted"),
        pl.col("ts_ns").is_null().sum().alias("untimed"),
        pl.col("pid").is_null().sum().alias("pidless")).collect().row(0)
    if unsorted or untimed or pidless:
        return None
    names = events.collect_schema().names()
    if {"row", "task_pid", "task_comm", "image"} <= set(names):
        return events   # an event table written by `kmltrace ingest`: already attributed
    indexed = events.with_row_index("row")
    # image = execs of the same pid at or before the row: a binary search in the sorted
    # (pid, row) keys of the (few) exec events, on whole columns
    execs = (indexed.filter(pl.col("event") == SCHED_PROCESS_EXEC)
             .select((pl.col("pid").cast(pl.Int64) * _PID_KEY + pl.col("row").cast(pl.Int64))
                     .alias("key")).sort("key").collect().get_column("key"))
    pid_key = pl.col("pid").cast(pl.Int64) * _PID_KEY
    image = (pl.lit(execs).search_sorted(pid_key + pl.col("row").cast(pl.Int64), side="right")
             .cast(pl.Int32)
             - pl.lit(execs).search_sorted(pid_key, side="left").cast(pl.Int32))
    return indexed.with_columns(
        pl.col("row").cast(pl.Int64), pl.col("pid").alias("task_pid"),
        pl.col("comm").alias("task_comm"), image.cast(pl.Int32).alias("image"))


def attribute_by_columns(events: pl.LazyFrame) -> pl.LazyFrame:
    """:func:`attribute` computed on the few columns it needs, then put beside `events`.

    When the events are already in order (one time-ordered source, an ingested table) the
    wide table is never gathered or copied: each later query reads only its own columns
    (from disk, for a parquet scan), which keeps a 10-million-event report in bounded memory.
    """
    names = events.collect_schema().names()
    fast = attribute_in_place(events)
    if fast is not None:
        return fast
    # an ingested table out of order (QEMU rows after the timed ones) is attributed afresh
    events = events.drop(list(ATTRIBUTION_OUTPUT), strict=False)
    names = events.collect_schema().names()
    narrow = events.select([c for c in ATTRIBUTION_COLUMNS if c in names]).with_row_index("_src")
    attr = (attribute(narrow).select("_src", "row", "task_pid", "task_comm", "image")
            .collect())
    in_order = bool((attr.get_column("_src").cast(pl.Int64) == attr.get_column("row")).all())
    if in_order:
        return pl.concat([events, attr.drop("_src").lazy()], how="horizontal")
    # one gather of the wide table in the merged order (cheaper than a join and a sort, and
    # done once: a lazy plan would redo it in every query)
    wide = events.collect().gather(attr.get_column("_src"))
    return wide.hstack(attr.drop("_src")).lazy()


def attribute(events: pl.LazyFrame) -> pl.LazyFrame:
    """Sort `events` and add ``row``, ``task_pid``, ``task_comm`` and ``image``.

    A table already in time order (one text trace, an ingested table) is not sorted again:
    sorting gathers every column and is the most expensive step on large captures.
    """
    events = events.drop(list(ATTRIBUTION_OUTPUT), strict=False)
    names = events.collect_schema().names()
    # one cheap pass over the time column decides what work is needed
    unsorted, untimed_rows, pidless_rows = events.select(
        (pl.col("ts_ns").drop_nulls().diff() < 0).any().alias("unsorted"),
        pl.col("ts_ns").is_null().sum().alias("untimed"),
        pl.col("pid").is_null().sum().alias("pidless")).collect().row(0)
    timed = events.filter(pl.col("ts_ns").is_not_null()) if untimed_rows else events
    if unsorted:
        timed = timed.sort(["ts_ns", "file", "seq"], maintain_order=True)
    else:
        timed = timed.set_sorted("ts_ns")
    untimed = (events.filter(pl.col("ts_ns").is_null()).sort(["file", "seq"], maintain_order=True)
               if untimed_rows else None)
    if "next_pid" in names:
        switches = (timed.filter(pl.col("event") == SCHED_SWITCH)
                    .select("ts_ns", "cpu", pl.col("next_pid").alias("_on_pid"),
                            pl.col("next_comm").alias("_on_comm")))
    else:
        switches = timed.filter(pl.lit(False)).select(
            "ts_ns", "cpu", pl.col("pid").alias("_on_pid"), pl.col("comm").alias("_on_comm"))
    # the switch row itself belongs to the task leaving; `allow_exact_matches=False` keeps
    # every event at the switch's own time with the previous task
    timed = timed.join_asof(switches, on="ts_ns", by="cpu", strategy="backward",
                            allow_exact_matches=False, check_sortedness=False)
    if untimed is not None:
        comm_dtype = events.collect_schema().get("next_comm", pl.String)
        untimed = untimed.with_columns(pl.lit(None, dtype=pl.Int32).alias("_on_pid"),
                                       pl.lit(None, dtype=comm_dtype).alias("_on_comm"))
        timed = pl.concat([timed, untimed], how="diagonal_relaxed")
    out = timed.with_columns(
        pl.int_range(pl.len(), dtype=pl.Int64).alias("row"),
        pl.coalesce("pid", "_on_pid").alias("task_pid"),
        # building a new string column is costly: only when some rows lack a pid
        (pl.when(pl.col("pid").is_not_null()).then(pl.col("comm"))
         .otherwise(pl.col("_on_comm")) if pidless_rows else pl.col("comm")).alias("task_comm"),
    ).drop("_on_pid", "_on_comm")
    # image = how many execs the task did before: execs are rare, so look the count up
    # (as of each row) instead of a running sum over every row of every task
    execs = (out.filter(pl.col("event") == SCHED_PROCESS_EXEC)
             .select("task_pid", "row",
                     pl.int_range(1, pl.len() + 1, dtype=pl.Int32).over("task_pid")
                     .alias("image")))
    return (out.join_asof(execs, on="row", by="task_pid", strategy="backward",
                          check_sortedness=False)
            .with_columns(pl.col("image").fill_null(0)))


def merge_notes(capture: Capture) -> list[MergeNote]:
    """Say which source was counted where two inputs recorded the same events."""
    notes = []
    for pair in overlapping_pairs(capture):
        dropped = _duplicates(pair.primary.events.lazy(), _shifted(pair))
        n = dropped.select(pl.len()).collect().item()
        if n:
            notes.append(MergeNote(pair.primary.path, _source(pair.primary), pair.secondary.path,
                                   _source(pair.secondary), n, pair.offset_ns, pair.anchors))
    return notes


# -- duplicates ---------------------------------------------------------------------------------

#: process lifecycle events are rare and unique enough to line two clocks up
ANCHOR_EVENTS = ("sched_process_exec", "sched_process_fork", "sched_process_exit")
#: anchors of one run agree on the offset within this much
ANCHOR_AGREEMENT_NS = 1_000_000
#: two records are one event when pid, cpu and event match within this (text precision
#: of both plus the error of the offset)
MATCH_TOLERANCE_NS = 3 * DEDUPE_PRECISION_NS


_SOURCES: dict[int, tuple] = {}


def _source(parsed) -> str:
    key = id(parsed.events)
    cached = _SOURCES.get(key)
    if cached is None or cached[0] is not parsed.events:
        sources = parsed.events.get_column("source").drop_nulls().unique().to_list()
        name = sources[0] if len(sources) == 1 else ",".join(sorted(sources)) or parsed.format
        cached = _SOURCES[key] = (parsed.events, name)
    return cached[1]


def _rank(parsed) -> tuple:
    source = _source(parsed)
    order = DEDUPE_SOURCES.index(source) if source in DEDUPE_SOURCES else len(DEDUPE_SOURCES)
    return (order, -parsed.events.height, parsed.path)


def _span(parsed) -> tuple[int, int] | None:
    ts = parsed.events.get_column("ts_ns")
    lo, hi = ts.min(), ts.max()
    return None if lo is None else (lo, hi)


def _anchors(parsed) -> pl.DataFrame:
    names = parsed.events.columns
    child = pl.col("child_pid") if "child_pid" in names else pl.lit(None, dtype=pl.Int32)
    filename = pl.col("filename") if "filename" in names else pl.lit(None, dtype=pl.String)
    return (parsed.events.filter(pl.col("event").is_in(list(ANCHOR_EVENTS)))
            .select("event", "pid", child.fill_null(-1).alias("child"),
                    filename.fill_null("").alias("filename"), "ts_ns")
            .unique(["event", "pid", "child", "filename"], keep="first", maintain_order=True))


def _clock_offset(primary, secondary) -> tuple[int, int] | None:
    """(offset, anchors) lining `secondary` up with `primary`, or None if not the same run.

    Anchors are process lifecycle events (exec with its filename, fork with its child,
    exit) seen by both; most of them must agree on one offset.
    """
    joined = _anchors(primary).join(_anchors(secondary), on=["event", "pid", "child", "filename"])
    if joined.height:
        diffs = (joined["ts_ns"] - joined["ts_ns_right"])
        offset = int(diffs.median())
        agreeing = int(((diffs - offset).abs() <= ANCHOR_AGREEMENT_NS).sum())
        if agreeing * 2 > joined.height:
            return offset, agreeing
        return None
    a, b = _span(primary), _span(secondary)
    if a[0] <= b[1] and b[0] <= a[1]:
        return 0, 0
    return None


def overlapping_pairs(capture: Capture) -> list[_Pair]:
    """(preferred, other) inputs of dedupable sources that recorded the same run."""
    candidates = sorted((p for p in capture.inputs if p.events.height
                         and _source(p) in DEDUPE_SOURCES and _span(p) is not None), key=_rank)
    pairs = []
    for i, primary in enumerate(candidates):
        for secondary in candidates[i + 1:]:
            aligned = _clock_offset(primary, secondary)
            if aligned is not None:
                pairs.append(_Pair(primary, secondary, *aligned))
    return pairs


def _shifted(pair: _Pair) -> pl.LazyFrame:
    return pair.secondary.events.lazy().with_columns(
        (pl.col("ts_ns") + pair.offset_ns).alias("ts_ns"))


def _duplicates(kept: pl.LazyFrame, other: pl.LazyFrame) -> pl.LazyFrame:
    """Rows of `other` with a row of `kept` of the same pid, cpu and event within tolerance."""
    right = (kept.filter(pl.col("ts_ns").is_not_null())
             .select("pid", "cpu", "event", "ts_ns", pl.col("ts_ns").alias("_match"))
             .sort("ts_ns"))
    left = (other.with_columns(pl.int_range(pl.len()).alias("_i"))
            .filter(pl.col("ts_ns").is_not_null()).sort("ts_ns"))
    return (left.join_asof(right, on="ts_ns", by=["pid", "cpu", "event"], strategy="nearest",
                           tolerance=MATCH_TOLERANCE_NS, check_sortedness=False)
            .filter(pl.col("_match").is_not_null()))


def _deduplicated(capture: Capture) -> list[pl.LazyFrame]:
    """Each input's events as a LazyFrame: rows already counted from another input of the
    same run are gone, and that input's times are on the preferred input's clock."""
    by_secondary: dict[int, list[_Pair]] = {}
    for pair in overlapping_pairs(capture):
        by_secondary.setdefault(id(pair.secondary), []).append(pair)
    frames = []
    for parsed in capture.inputs:
        if not parsed.events.height:
            continue
        pairs = by_secondary.get(id(parsed), [])
        frame = parsed.events.lazy()
        if pairs:
            frame = _shifted(pairs[0])
            dups = [_duplicates(pair.primary.events.lazy(), frame).select("_i")
                    for pair in pairs]
            frame = (frame.with_columns(pl.int_range(pl.len()).alias("_i"))
                     .join(pl.concat(dups).unique(), on="_i", how="anti").drop("_i"))
        frames.append(frame)
    return frames


def available_events(events: pl.LazyFrame) -> set[str]:
    """``event`` and ``system:event`` names present in `events` (for requirements)."""
    names = events.select("system", "event").unique().collect()
    out = set()
    for system, event in names.iter_rows():
        if event is None:
            continue
        out.add(event)
        if system:
            out.add(f"{system}:{event}")
    return out
