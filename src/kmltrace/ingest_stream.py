"""``kmltrace ingest`` of one text trace batch by batch, so memory stays bounded.

The parser's batches (formats/text_pipeline.TextParse: ``seq`` and ``line`` count across
batches) get the columns analysis.events.merged_events adds (``row``, ``task_pid``,
``task_comm``, ``image``), computed the way it computes them for a time-ordered table whose
timed rows all carry their pid (what tracefs, trace-cmd and perf print). Each batch goes to a
parquet part beside the output; the parts are then streamed into the one output file.

A trace that needs the whole-table merge (times going backwards, timed rows without a pid)
raises :class:`NeedsWholeTable` before anything is written to the output.
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import polars as pl

from kmltrace.formats import Parsed
from kmltrace.formats.text_pipeline import in_column_order
from kmltrace.schema import SCHED_PROCESS_EXEC, conform

ATTRIBUTION = ("row", "task_pid", "task_comm", "image")
#: parts are read once, right away: not worth compressing (Arrow IPC parts were no cheaper
#: to write and, memory-mapped when read, raised the peak RSS)
PART_OPTIONS = dict(compression="uncompressed", statistics=False)
#: the output: zstd at level 1 wrote the 1.78 M-row bench table in 0.75 s (11 MB) where the
#: default level took 1.16 s (9 MB)
OUTPUT_OPTIONS = dict(compression="zstd", compression_level=1)
#: (pid, row) packed in one Int64 key, as analysis.events does
_PID_KEY = 1 << 40


class NeedsWholeTable(Exception):
    """The trace cannot be attributed batch by batch (see the module docstring)."""


def streamable(module) -> bool:
    """Whether the format module parses batch by batch (the text formats do)."""
    return hasattr(module, "text_parse")


def ingest_text(path: Path, module, output: Path, **options) -> Parsed:
    """Parse the text trace at `path` with `module` into the parquet file `output` (written
    beside its final name, then renamed). Returns the input's Parsed (events left empty;
    ``event_count`` says how many rows were written)."""
    parse = module.text_parse(path, **options)
    parts_dir = output.with_name(f".{output.name}.{os.getpid()}.parts")
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    parts_dir.mkdir(exist_ok=True)
    try:
        rows = _write_parts(parse, parts_dir)
        if rows:
            _join_parts(parts_dir, tmp)
            os.replace(tmp, output)
    finally:
        shutil.rmtree(parts_dir, ignore_errors=True)
        if tmp.exists():
            tmp.unlink()
    meta = parse.meta if rows else {}
    return Parsed(path=str(path), format=module.NAME, errors=parse.errors, meta=meta,
                  event_count=rows)


class _PartWriter:
    """Writes parts in a worker thread (polars writes without the GIL), so the next batch is
    parsed meanwhile; one write at a time in flight keeps the memory bounded."""

    def __init__(self, parts_dir: Path):
        self.parts_dir = parts_dir
        self.count = 0
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._pending = None

    def write(self, frame: pl.DataFrame) -> None:
        self.wait()
        path = self.parts_dir / f"part-{self.count:06d}.parquet"
        self._pending = self._pool.submit(frame.write_parquet, path, **PART_OPTIONS)
        self.count += 1

    def wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)


def _write_parts(parse, parts_dir: Path) -> int:
    """Attribute each batch and write it as a part; untimed rows (lost-event records) go
    last, after every timed row, as merged_events puts them. Returns the rows written."""
    writer = _PartWriter(parts_dir)
    try:
        return _write_batches(parse, writer)
    finally:
        writer.close()


def _write_batches(parse, writer: _PartWriter) -> int:
    rows = 0
    last_ts = None
    execs: dict[int, int] = {}          # pid -> execs seen in earlier batches
    untimed: list[pl.DataFrame] = []
    for batch in parse.batches():
        ts = batch.get_column("ts_ns")
        timed_rows = batch.height - ts.null_count()
        if ts.null_count():
            untimed.append(batch.filter(pl.col("ts_ns").is_null()))
            batch = batch.filter(pl.col("ts_ns").is_not_null())
            ts = batch.get_column("ts_ns")
        if timed_rows == 0:
            continue
        if batch.get_column("pid").null_count():
            raise NeedsWholeTable("timed rows without a pid")
        first = ts[0]
        if (last_ts is not None and first < last_ts) or bool((ts.diff() < 0).any()):
            raise NeedsWholeTable("times go backwards")
        last_ts = ts[-1]
        batch = _attributed(batch, rows, execs)
        writer.write(batch)
        rows += batch.height
    if untimed:
        table = pl.concat(untimed, how="diagonal_relaxed")
        pid = pl.col("pid")
        known = pid.replace_strict(execs, default=0, return_dtype=pl.Int32) if execs else 0
        table = table.with_columns(
            pl.int_range(rows, rows + pl.len(), dtype=pl.Int64).alias("row"),
            pid.alias("task_pid"),
            pl.when(pid.is_not_null()).then(pl.col("comm")).alias("task_comm"),
            pl.when(pid.is_not_null()).then(known).otherwise(0).cast(pl.Int32).alias("image"))
        writer.write(table)
        rows += table.height
    return rows


def _attributed(batch: pl.DataFrame, first_row: int, execs: dict[int, int]) -> pl.DataFrame:
    """``row`` from `first_row` on; the task is the row's own pid; ``image`` counts the
    task's execs at or before the row, `execs` holding the counts of earlier batches (and
    updated with this batch's)."""
    batch = batch.with_columns(
        pl.int_range(first_row, first_row + pl.len(), dtype=pl.Int64).alias("row"))
    keys = (batch.filter(pl.col("event") == SCHED_PROCESS_EXEC)
            .select(pl.col("pid"),
                    (pl.col("pid").cast(pl.Int64) * _PID_KEY + pl.col("row")).alias("key"))
            .sort("key"))
    image = pl.lit(0, dtype=pl.Int32)
    if keys.height:
        sorted_keys = keys.get_column("key")
        pid_key = pl.col("pid").cast(pl.Int64) * _PID_KEY
        image = (pl.lit(sorted_keys).search_sorted(pid_key + pl.col("row"), side="right")
                 .cast(pl.Int32)
                 - pl.lit(sorted_keys).search_sorted(pid_key, side="left").cast(pl.Int32))
    if execs:
        image = image + pl.col("pid").replace_strict(execs, default=0, return_dtype=pl.Int32)
    out = batch.with_columns(pl.col("pid").alias("task_pid"), pl.col("comm").alias("task_comm"),
                             image.cast(pl.Int32).alias("image"))
    for pid, count in keys.group_by("pid").len().iter_rows():
        execs[pid] = execs.get(pid, 0) + count
    return out


def _join_parts(parts_dir: Path, tmp: Path) -> None:
    """One parquet file from the parts, streamed: columns as merged_events orders them.

    One scan of every part with the union of their columns (a column a part lacks is read as
    nulls), in low-memory mode: a concatenation of one scan per part held ~50 % more."""
    parts = sorted(parts_dir.glob("part-*.parquet"))
    schema: dict = {}
    for part in parts:
        for name, dtype in pl.read_parquet_schema(part).items():
            if schema.get(name, pl.Null) == pl.Null:
                schema[name] = dtype
    frame = pl.scan_parquet(parts, schema=schema, missing_columns="insert", low_memory=True)
    frame = in_column_order(conform(frame))
    names = [n for n in frame.collect_schema().names() if n not in ATTRIBUTION]
    frame.select(*names, *ATTRIBUTION).sink_parquet(tmp, **OUTPUT_OPTIONS)
