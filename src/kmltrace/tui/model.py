"""What the TUI shows, computed without Textual: loading, filtering, searching, lanes.

Everything here is plain polars and dicts so it can be tested (and timed) on its own; the
screens only draw what these functions return.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import polars as pl

from kmltrace.schema import PAGE_FAULT_EVENTS
from kmltrace.tui.session import Loaded, is_parquet

#: event names drawn as marks on the timeline, strongest first
EXCEPTION_EVENTS = ("exception", "triple_fault", "cpu_reset", "oops")
INTERRUPT_EVENTS = ("hw_interrupt", "local_timer_entry", "irq_handler_entry",
                    "reschedule_entry", "call_function_entry", "call_function_single_entry")


class ParquetRows:
    """The rows of a parquet event table read a slice at a time, so the event view can show a
    10-million-row table at once while the whole table is still being read."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.lazy = pl.scan_parquet(self.path)
        self.columns = self.lazy.collect_schema().names()
        self.height = int(self.lazy.select(pl.len()).collect().item())
        # read now, before the whole-table read keeps polars' thread pool busy
        self.head = self.lazy.slice(0, self.HEAD_ROWS).collect()

    HEAD_ROWS = 4096

    def slice(self, start: int, length: int) -> pl.DataFrame:
        if start + length <= self.head.height:
            return self.head.slice(start, length)
        return self.lazy.slice(start, length).collect()

    def row(self, index: int, named: bool = False):
        return self.slice(index, 1).row(0, named=named)


READ_CHUNK_ROWS = 1 << 18


def read_parquet_in_chunks(path: str | Path) -> pl.DataFrame:
    """The whole table, read 256 Ki rows at a time: polars runs queries on one shared
    thread pool, and one big read would queue the event view's small page reads behind it
    for the whole read (seconds on a 10 M-row table)."""
    lazy = pl.scan_parquet(str(path))
    height = int(lazy.select(pl.len()).collect().item())
    parts = [lazy.slice(start, READ_CHUNK_ROWS).collect()
             for start in range(0, height, READ_CHUNK_ROWS)]
    return pl.concat(parts, rechunk=False) if parts else lazy.collect()


def load_capture(targets: list[str], vmlinux: str | None = None):
    """The Capture of `targets`; a parquet event table (``kmltrace ingest`` output) is
    taken as it is, so a large capture opens without being parsed again."""
    from kmltrace.capture import Capture, load
    from kmltrace.formats import Parsed
    from kmltrace.schema import conform

    tables = [t for t in targets if Path(t).is_file() and is_parquet(Path(t))]
    others = [t for t in targets if t not in tables]
    capture = load(others, vmlinux=vmlinux) if others else Capture(vmlinux=vmlinux)
    for table in tables:
        try:
            frame = conform(read_parquet_in_chunks(table))
            capture.inputs.append(Parsed(path=str(table), format="parquet", events=frame))
        except Exception as e:  # a corrupt table is one input's error, not the session's
            from kmltrace.errors import InputError
            capture.inputs.append(Parsed(path=str(table), format="parquet",
                                         errors=[InputError(f"unreadable parquet: {e}",
                                                            path=str(table))]))
    return capture


def load_events(capture) -> pl.DataFrame:
    from kmltrace.analysis.events import merged_events

    frames = [p for p in capture.inputs if p.events.height]
    if len(frames) == 1 and frames[0].format == "parquet":
        return frames[0].events          # an ingested table is already merged and sorted
    return merged_events(capture).collect()


def load_report(capture) -> dict:
    from kmltrace.report import build_report

    return build_report(capture, postmortem=True)


def load_all(targets: list[str], vmlinux: str | None = None,
             progress: Callable[[str, float, Loaded], None] | None = None) -> Loaded:
    """Load in stages, calling ``progress(stage, fraction, loaded)`` after each one.

    A failing stage records its error and the later stages still run where they can.
    """
    loaded = Loaded(targets=list(targets))
    report = progress or (lambda *a: None)
    tables = [t for t in targets if Path(t).is_file() and is_parquet(Path(t))]
    if len(tables) == 1 and len(targets) == 1:
        try:
            loaded.preview = ParquetRows(tables[0])
        except Exception:       # unreadable: load_capture reports it
            pass
    report("reading inputs", 0.05, loaded)
    loaded.capture = load_capture(loaded.targets, vmlinux)
    loaded.errors.extend(str(e) for e in loaded.capture.errors)
    loaded.snapshots = [s for s in loaded.capture.metas("snapshot") if isinstance(s, dict)]
    report("merging events", 0.3, loaded)
    try:
        loaded.events = load_events(loaded.capture)
    except Exception as e:
        loaded.errors.append(f"event table: {e}")
        from kmltrace.schema import empty_events
        loaded.events = empty_events()
    report("analysing", 0.6, loaded)
    try:
        loaded.report = load_report(loaded.capture)
    except ImportError as e:
        loaded.errors.append(f"analysis unavailable in this build: {e}")
        loaded.report = {"incidents": [], "processes": [], "inputs": []}
    except Exception as e:
        loaded.errors.append(f"analysis failed: {type(e).__name__}: {e}")
        loaded.report = {"incidents": [], "processes": [], "inputs": []}
    report("done", 1.0, loaded)
    return loaded


# -- formatting --------------------------------------------------------------------------------

def parse_time(text: str) -> int:
    """A time typed by the user: seconds (``12.5``), or nanoseconds with a ``ns`` suffix."""
    text = text.strip().lower()
    try:
        if text.endswith("ns"):
            return int(text[:-2])
        if text.endswith("ms"):
            return int(float(text[:-2]) * 1_000_000)
        if text.endswith("us"):
            return int(float(text[:-2]) * 1_000)
        if text.endswith("s"):
            text = text[:-1]
        whole, _, frac = text.partition(".")
        frac = (frac + "000000000")[:9]
        sign = -1 if whole.startswith("-") else 1
        return sign * (abs(int(whole or "0")) * 1_000_000_000 + int(frac or "0"))
    except ValueError:
        raise ValueError(f"not a time: {text!r} (seconds like 12.5, or 1234ns)") from None


# -- the event view's filter ---------------------------------------------------------------------

_TOKEN = re.compile(r"^(event|pid|cpu|comm|source|time)=(\S+)$")


def parse_filter(text: str) -> pl.Expr | None:
    """The filter typed in the event view as one polars expression (None: no filter).

    Words ``event=NAME``, ``pid=N``, ``cpu=N``, ``comm=NAME``, ``source=NAME`` and
    ``time=A..B`` (seconds; either end may be empty) are ANDed; whatever is left is a SQL
    expression over the columns (``vector = 14 and address > 4096``).
    Raises ValueError naming what does not parse.
    """
    exprs: list[pl.Expr] = []
    rest: list[str] = []
    for word in text.split():
        match = _TOKEN.match(word)
        if not match:
            rest.append(word)
            continue
        key, value = match.groups()
        if key in ("pid", "cpu"):
            values = value.split(",")
            try:
                numbers = [int(v, 0) for v in values]
            except ValueError:
                raise ValueError(f"{key} must be a number: {value!r}") from None
            exprs.append(pl.col(key).is_in(numbers))
        elif key == "time":
            lo, sep, hi = value.partition("..")
            if not sep:
                raise ValueError(f"time wants A..B in seconds: {value!r}")
            if lo:
                exprs.append(pl.col("ts_ns") >= parse_time(lo))
            if hi:
                exprs.append(pl.col("ts_ns") <= parse_time(hi))
        else:
            exprs.append(pl.col(key).is_in(value.split(",")))
    if rest:
        query = " ".join(rest)
        try:
            exprs.append(pl.sql_expr(query))
        except Exception as e:
            raise ValueError(f"query does not parse: {query!r}: {e}") from None
    if not exprs:
        return None
    return pl.all_horizontal(exprs)


def apply_filter(frame: pl.DataFrame, text: str) -> pl.DataFrame:
    expr = parse_filter(text)
    if expr is None:
        return frame
    try:
        return frame.filter(expr)
    except Exception as e:
        raise ValueError(f"filter cannot run: {e}") from None


# -- finding rows --------------------------------------------------------------------------------

def _haystack(frame: pl.DataFrame) -> pl.Expr:
    from kmltrace.formats.raw_text import raw_text_expr

    parts = [pl.col(c).cast(pl.String).fill_null("") for c in ("comm", "event")
             if c in frame.columns]
    # binary-decoded events keep no raw text: search the text they would print
    parts.append(raw_text_expr(frame.schema).fill_null(""))
    return pl.concat_str(parts, separator=" ").str.to_lowercase()


def search_row(frame: pl.DataFrame, text: str, start: int = 0,
               backwards: bool = False) -> int | None:
    """The first row at or after `start` (before, when `backwards`) whose comm, event or raw
    text (rendered from the typed fields where the row has none) contains `text`
    (case-insensitive, literal); None when there is none."""
    if not text or frame.height == 0:
        return None
    hits = frame.select(_haystack(frame).str.contains(text.lower(), literal=True)
                        .arg_true().alias("row"))["row"]
    if hits.len() == 0:
        return None
    if backwards:
        before = hits.filter(hits <= start)
        return int(before[-1]) if before.len() else None
    after = hits.filter(hits >= start)
    return int(after[0]) if after.len() else None


def row_at_time(frame: pl.DataFrame, ts_ns: int) -> int | None:
    """The first row at or after `ts_ns` (rows without time are never chosen)."""
    if frame.height == 0 or "ts_ns" not in frame.columns:
        return None
    hits = frame.select((pl.col("ts_ns") >= ts_ns).arg_true().first())
    value = hits.item()
    if value is None:
        last = frame.select(pl.col("ts_ns").is_not_null().arg_true().last()).item()
        return None if last is None else int(last)
    return int(value)


def find_event_row(frame: pl.DataFrame, evidence: dict) -> int | None:
    """The row of the event table an incident's evidence entry points at, or None.

    Evidence is ``{source, line, text}`` (CONTRACT.md), sometimes with ``file``, ``offset``
    or ``ts_ns``: match on what it has, most precise first.
    """
    if frame.height == 0:
        return None
    conds: list[pl.Expr] = []
    source = evidence.get("source")
    if evidence.get("file") and "file" in frame.columns:
        conds.append(pl.col("file") == str(evidence["file"]))
    elif source:
        # the source is a kind (ftrace, qemu ...) or, for some analyses, a file path
        by_kind = pl.col("source") == str(source)
        if "file" in frame.columns:
            by_kind = by_kind | (pl.col("file") == str(source)) | \
                pl.col("file").str.ends_with("/" + str(source))
        conds.append(by_kind)
    located = False
    if evidence.get("line") is not None and "line" in frame.columns:
        conds.append(pl.col("line") == int(evidence["line"]))
        located = True
    elif evidence.get("offset") is not None and "offset" in frame.columns:
        conds.append(pl.col("offset") == int(evidence["offset"]))
        located = True
    if evidence.get("ts_ns") is not None:
        conds.append(pl.col("ts_ns") == int(evidence["ts_ns"]))
        located = True
    if not located:
        return None
    hit = frame.select(pl.all_horizontal(conds).fill_null(False).arg_true().first()).item()
    return None if hit is None else int(hit)


# -- processes and timeline --------------------------------------------------------------------

SPARK = "▁▂▃▄▅▆▇█"


def time_span(frame: pl.DataFrame) -> tuple[int, int] | None:
    if frame.height == 0 or "ts_ns" not in frame.columns:
        return None
    lo, hi = frame.select(pl.col("ts_ns").min().alias("lo"),
                          pl.col("ts_ns").max().alias("hi")).row(0)
    if lo is None:
        return None
    return int(lo), int(hi)


def fault_counts(frame: pl.DataFrame, buckets: int) -> dict[int, list[int]]:
    """Page faults per pid in `buckets` equal slices of the capture's time span."""
    span = time_span(frame)
    if span is None or buckets <= 0:
        return {}
    lo, hi = span
    width = max(1, (hi - lo + buckets) // buckets)
    counts = (frame.lazy()
              .filter(pl.col("event").is_in(PAGE_FAULT_EVENTS) | (pl.col("vector") == 14))
              .filter(pl.col("ts_ns").is_not_null() & pl.col("pid").is_not_null())
              .group_by("pid", ((pl.col("ts_ns") - lo) // width).clip(0, buckets - 1)
                        .alias("bucket"))
              .len()
              .collect())
    out: dict[int, list[int]] = {}
    for pid, bucket, n in counts.iter_rows():
        out.setdefault(int(pid), [0] * buckets)[int(bucket)] = int(n)
    return out


def clip_buckets(values: list[int], frame: pl.DataFrame, first_ns, last_ns) -> list[int]:
    """`values` (from fault_counts over the capture) with the buckets outside
    [first_ns, last_ns] zeroed: one exec image of a pid (a report row) keeps its own faults."""
    span = time_span(frame)
    if span is None or not values or first_ns is None or last_ns is None:
        return values
    lo, hi = span
    buckets = len(values)
    width = max(1, (hi - lo + buckets) // buckets)
    return [v if lo + (i + 1) * width > first_ns and lo + i * width <= last_ns else 0
            for i, v in enumerate(values)]


def sparkline(values: list[int]) -> str:
    if not values:
        return ""
    top = max(values)
    if top == 0:
        return SPARK[0] * len(values)
    return "".join(" " if v == 0 else SPARK[min(len(SPARK) - 1, v * len(SPARK) // (top + 1))]
                   for v in values)


@dataclass
class Lane:
    label: str
    cells: list[str]            # one character per column: who ran (a pid's letter / CPU digit)
    pids: list[int | None]      # who ran in each column (for the legend)
    marks: list[str]            # "!" exception, "f" page fault, "i" interrupt, " " none


def timeline_lanes(frame: pl.DataFrame, t0: int, t1: int, width: int,
                   by: str = "cpu", limit: int = 32) -> list[Lane]:
    """Lanes of `width` columns over [t0, t1): per CPU (who ran: the pid with most events in
    the column) or per pid (on which CPU); each lane's ``marks`` say where ``!`` exceptions,
    ``f`` page faults and ``i`` interrupts happened (the strongest per column)."""
    if width <= 0 or t1 <= t0 or frame.height == 0:
        return []
    step = max(1, (t1 - t0 + width - 1) // width)
    window = (frame.lazy()
              .filter(pl.col("ts_ns").is_between(t0, t1, closed="left"))
              .filter(pl.col(by).is_not_null())
              .with_columns(((pl.col("ts_ns") - t0) // step).cast(pl.Int64).alias("col")))
    mark = (pl.when(pl.col("event").is_in(EXCEPTION_EVENTS)
                    | (pl.col("vector").is_not_null() & (pl.col("vector") != 14)
                       & (pl.col("vector") < 32)))
            .then(3)
            .when(pl.col("event").is_in(PAGE_FAULT_EVENTS) | (pl.col("vector") == 14)).then(2)
            .when(pl.col("event").is_in(INTERRUPT_EVENTS)).then(1)
            .otherwise(0))
    other = "pid" if by == "cpu" else "cpu"
    cells = (window
             .with_columns(mark.alias("mark"))
             .group_by(by, "col")
             .agg(pl.col(other).drop_nulls().mode().first().alias("who"),
                  pl.col("mark").max().alias("mark"))
             .sort(by, "col")
             .collect())
    lanes_order = (window.group_by(by).len().sort("len", descending=True).head(limit)
                   .collect()[by].sort().to_list())
    lanes: dict[int, Lane] = {}
    for key in lanes_order:
        label = f"CPU {key}" if by == "cpu" else f"pid {key}"
        lanes[key] = Lane(label, [" "] * width, [None] * width, [" "] * width)
    for key, col, who, m in cells.iter_rows():
        lane = lanes.get(key)
        if lane is None or not 0 <= col < width:
            continue
        lane.pids[col] = who
        lane.cells[col] = who_letter(who) if by == "cpu" else who_digit(who)
        lane.marks[col] = "!" if m == 3 else "f" if m == 2 else "i" if m == 1 else " "
    return [lanes[k] for k in lanes_order]


def who_letter(pid) -> str:
    if pid is None:
        return "·"
    if pid == 0:
        return "-"          # idle
    return "ABCDEFGHJKLMNPQRSTUVWXYZ"[int(pid) % 24]


def who_digit(cpu) -> str:
    return "·" if cpu is None else str(int(cpu) % 10)


