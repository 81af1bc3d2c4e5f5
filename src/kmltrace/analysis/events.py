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
DEDUPE_KEY = ["pid", "cpu", "event", "_us"]


@dataclass
class MergeNote:
    """Which of two overlapping inputs was counted, and how many duplicates were dropped."""

    counted: str
    counted_source: str
    dropped_from: str
    dropped_source: str
    duplicates: int

    def to_json(self) -> dict:
        return {"counted": self.counted, "counted_source": self.counted_source,
                "dropped_from": self.dropped_from, "dropped_source": self.dropped_source,
                "duplicates": self.duplicates}


def merged_events(capture: Capture) -> pl.LazyFrame:
    """All events of `capture`, deduplicated, sorted and attributed (see module docstring).

    Timed rows come first in ``ts_ns`` order (``seq`` breaks ties within a file); rows of
    sources without time (a QEMU log) follow in their own ``seq`` order, file by file.
    """
    frames = _deduplicated(capture)
    if not frames:
        frames = [empty_events().lazy()]
    events = conform(pl.concat(frames, how="diagonal_relaxed"))
    return attribute(events)


def attribute(events: pl.LazyFrame) -> pl.LazyFrame:
    """Sort `events` and add ``row``, ``task_pid``, ``task_comm`` and ``image``."""
    timed = events.filter(pl.col("ts_ns").is_not_null()).sort(
        ["ts_ns", "file", "seq"], maintain_order=True)
    untimed = events.filter(pl.col("ts_ns").is_null()).sort(["file", "seq"], maintain_order=True)
    switches = (timed.filter(pl.col("event") == SCHED_SWITCH)
                .select("ts_ns", "cpu", pl.col("next_pid").alias("_on_pid"),
                        pl.col("next_comm").alias("_on_comm")))
    if "next_pid" not in events.collect_schema().names():
        switches = timed.filter(pl.lit(False)).select(
            "ts_ns", "cpu", pl.col("pid").alias("_on_pid"), pl.col("comm").alias("_on_comm"))
    # the switch row itself belongs to the task leaving; `allow_exact_matches=False` keeps
    # every event at the switch's own time with the previous task
    timed = timed.join_asof(switches, on="ts_ns", by="cpu", strategy="backward",
                            allow_exact_matches=False, check_sortedness=False)
    untimed = untimed.with_columns(pl.lit(None, dtype=pl.Int32).alias("_on_pid"),
                                   pl.lit(None, dtype=pl.String).alias("_on_comm"))
    out = pl.concat([timed, untimed], how="diagonal_relaxed").with_columns(
        pl.int_range(pl.len(), dtype=pl.Int64).alias("row"),
        pl.coalesce("pid", "_on_pid").alias("task_pid"),
        pl.when(pl.col("pid").is_not_null()).then(pl.col("comm"))
          .otherwise(pl.col("_on_comm")).alias("task_comm"),
    ).drop("_on_pid", "_on_comm")
    return out.with_columns(
        (pl.col("event") == SCHED_PROCESS_EXEC).cast(pl.Int32).cum_sum()
        .over("task_pid").fill_null(0).alias("image"))


def merge_notes(capture: Capture) -> list[MergeNote]:
    """Say which source was counted where two inputs recorded the same events."""
    notes = []
    for primary, secondary in _overlapping_pairs(capture):
        dropped = _duplicates(_keyed(primary.events.lazy()), _keyed(secondary.events.lazy()))
        n = dropped.select(pl.len()).collect().item()
        if n:
            notes.append(MergeNote(primary.path, _source(primary), secondary.path,
                                   _source(secondary), n))
    return notes


# -- duplicates ---------------------------------------------------------------------------------

def _source(parsed) -> str:
    sources = parsed.events.get_column("source").drop_nulls().unique().to_list()
    return sources[0] if len(sources) == 1 else ",".join(sorted(sources)) or parsed.format


def _rank(parsed) -> tuple:
    source = _source(parsed)
    order = DEDUPE_SOURCES.index(source) if source in DEDUPE_SOURCES else len(DEDUPE_SOURCES)
    return (order, -parsed.events.height, parsed.path)


def _span(parsed) -> tuple[int, int] | None:
    ts = parsed.events.get_column("ts_ns")
    lo, hi = ts.min(), ts.max()
    return None if lo is None else (lo, hi)


def _overlapping_pairs(capture: Capture) -> list[tuple]:
    """(preferred, other) inputs of dedupable sources whose time ranges overlap."""
    candidates = sorted((p for p in capture.inputs if p.events.height
                         and _source(p) in DEDUPE_SOURCES and _span(p) is not None), key=_rank)
    pairs = []
    for i, primary in enumerate(candidates):
        a = _span(primary)
        for secondary in candidates[i + 1:]:
            b = _span(secondary)
            if a[0] <= b[1] and b[0] <= a[1]:
                pairs.append((primary, secondary))
    return pairs


def _keyed(frame: pl.LazyFrame) -> pl.LazyFrame:
    return frame.with_columns((pl.col("ts_ns") // DEDUPE_PRECISION_NS).alias("_us"))


def _duplicates(kept: pl.LazyFrame, other: pl.LazyFrame) -> pl.LazyFrame:
    """Rows of `other` that `kept` already has (the k-th copy of a key matches the k-th)."""
    counts = kept.group_by(DEDUPE_KEY).agg(pl.len().alias("_n"))
    ranked = other.with_columns(pl.int_range(pl.len()).over(DEDUPE_KEY).alias("_k"))
    return ranked.join(counts, on=DEDUPE_KEY, how="inner", nulls_equal=False).filter(
        pl.col("_k") < pl.col("_n"))


def _deduplicated(capture: Capture) -> list[pl.LazyFrame]:
    """Each input's events as a LazyFrame, with rows already counted from another input gone."""
    pairs = _overlapping_pairs(capture)
    drop_against: dict[int, list] = {}
    for primary, secondary in pairs:
        drop_against.setdefault(id(secondary), []).append(primary)
    frames = []
    for parsed in capture.inputs:
        if not parsed.events.height:
            continue
        frame = parsed.events.lazy()
        for primary in drop_against.get(id(parsed), []):
            keyed = _keyed(frame).with_columns(pl.int_range(pl.len()).alias("_i"))
            dup = _duplicates(_keyed(primary.events.lazy()), keyed).select("_i")
            frame = keyed.join(dup, on="_i", how="anti").drop("_us", "_i")
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
