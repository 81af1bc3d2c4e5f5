"""``kmltrace ingest`` of one text trace batch by batch, so memory stays bounded.

The parser's batches (formats/text_pipeline.TextParse: ``seq`` and ``line`` count across
batches) get the columns analysis.events.merged_events adds (``row``, ``task_pid``,
``task_comm``, ``image``), computed the way it computes them for a time-ordered table whose
timed rows all carry their pid (what tracefs, trace-cmd and perf print). The batches stream
into the one output file as they are parsed (polars' streaming parquet sink), in the output
schema (event_file.py): every column is known before the first batch, so nothing is
written twice.

A trace that needs the whole-table merge (times going backwards, timed rows without a pid)
raises :class:`NeedsWholeTable`; nothing is left at the output's name.
"""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
from polars.io.plugins import register_io_source

from kmltrace.formats import Parsed
from kmltrace.event_file import (OUTPUT_OPTIONS, beside, output_schema, own_columns,
                                 to_output_schema)
from kmltrace.schema import SCHED_PROCESS_EXEC

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
    with beside(output) as tmp:
        rows = _sink(parse, tmp)
        if rows:
            os.replace(tmp, output)
    meta = parse.meta if rows else {}
    return Parsed(path=str(path), format=module.NAME, errors=parse.errors, meta=meta,
                  event_count=rows)


def _sink(parse, tmp: Path) -> int:
    """Stream the attributed batches of `parse` into the parquet file `tmp`; the rows
    written. The parse runs inside polars' sink, which asks for the next batch while it
    encodes the one before."""
    schema = output_schema()
    rows = [0]

    def batches(with_columns, predicate, n_rows, batch_size):
        for frame in _attributed_batches(parse):
            if own := own_columns(frame, schema):
                raise NeedsWholeTable(f"columns outside the event file's: {own}")
            rows[0] += frame.height
            frame = to_output_schema(frame, schema)
            # the sink asks for whole frames; honour a narrower request all the same
            if with_columns is not None:
                frame = frame.select(with_columns)
            if predicate is not None:
                frame = frame.filter(predicate)
            yield frame

    register_io_source(batches, schema=schema).sink_parquet(tmp, **OUTPUT_OPTIONS)
    return rows[0]


def _attributed_batches(parse):
    """The batches with their attribution columns; untimed rows (lost-event records) come
    last, after every timed row, as merged_events puts them."""
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
        rows += batch.height
        yield batch
    if untimed:
        table = pl.concat(untimed, how="diagonal_relaxed")
        pid = pl.col("pid")
        known = pid.replace_strict(execs, default=0, return_dtype=pl.Int32) if execs else 0
        yield table.with_columns(
            pl.int_range(rows, rows + pl.len(), dtype=pl.Int64).alias("row"),
            pid.alias("task_pid"),
            pl.when(pid.is_not_null()).then(pl.col("comm")).alias("task_comm"),
            pl.when(pid.is_not_null()).then(known).otherwise(0).cast(pl.Int32).alias("image"))


def _attributed(batch: pl.DataFrame, first_row: int, execs: dict[int, int]) -> pl.DataFrame:
    """``row`` from `first_row` on; the task is the row's own pid; ``image`` counts the
    task's execs at or before the row, `execs` holding the counts of earlier batches (and
    updated with this batch's). Built as columns, not through the query engine: per batch
    its fixed costs were most of the attribution's time."""
    height = batch.height
    row = pl.int_range(first_row, first_row + height, dtype=pl.Int64, eager=True).alias("row")
    pid = batch.get_column("pid")
    is_exec = batch.get_column("event") == SCHED_PROCESS_EXEC
    if is_exec.any():
        exec_pids = pid.filter(is_exec)
        keys = (exec_pids.cast(pl.Int64) * _PID_KEY + row.filter(is_exec)).sort()
        pid_key = pid.cast(pl.Int64) * _PID_KEY
        image = (keys.search_sorted(pid_key + row, side="right").cast(pl.Int32)
                 - keys.search_sorted(pid_key, side="left").cast(pl.Int32))
    else:
        exec_pids = None
        image = pl.repeat(0, height, dtype=pl.Int32, eager=True)
    if execs:
        image = image + pid.replace_strict(execs, default=0, return_dtype=pl.Int32)
    if exec_pids is not None:
        for exec_pid, count in exec_pids.value_counts().iter_rows():
            execs[exec_pid] = execs.get(exec_pid, 0) + count
    return batch.hstack([row, pid.alias("task_pid"), batch.get_column("comm").alias("task_comm"),
                         image.cast(pl.Int32).alias("image")])
