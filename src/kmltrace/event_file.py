"""The event table as the parquet file ``kmltrace ingest`` writes.

Every file has the same columns, whatever events its trace holds: the core, provenance and
common columns, every column of the text field table (formats/fields.py; null where no
event fills it), the columns a source adds of its own (a trace.dat's other tracepoint
fields, a QEMU log's registers), then the attribution columns of analysis.events. A query
on the file of one capture then runs on the file of another, and the streamed writer
(ingest_stream.py) knows the file's columns before its first batch, so it writes each batch
once, as it is parsed.
"""

from __future__ import annotations

import atexit
import functools
import os
from contextlib import contextmanager
from pathlib import Path

import polars as pl

from kmltrace.schema import COMMON_COLUMNS, CORE_COLUMNS, FIELD_COLUMNS, PROVENANCE_COLUMNS

#: zstd at level 1: on the 1.78 M-row bench table 0.7 s and 9 MB, where the default level
#: took 1.2 s for 9 MB and an uncompressed file is 82 MB. Row groups of 64 Ki rows: the
#: streamed ingest holds fewer batches for a row group (2.9-3.0 s and 1.20x the text against
#: 3.2-3.6 s and 1.18-1.22x with polars' default, same file size within 2 %). Column
#: statistics stay on: readers skip row groups by them, and they cost no measurable time.
OUTPUT_OPTIONS = dict(compression="zstd", compression_level=1, row_group_size=1 << 16)

#: the columns analysis.events' attribution adds, last
ATTRIBUTION = {"row": pl.Int64, "task_pid": pl.Int32, "task_comm": pl.String,
               "image": pl.Int32}


@functools.cache
def output_schema() -> pl.Schema:
    """The columns of every event file, in order (a source's own columns go before the
    attribution ones)."""
    from kmltrace.formats import fields

    fixed = {**CORE_COLUMNS, **PROVENANCE_COLUMNS, **COMMON_COLUMNS}
    # what every text parser adds besides the field table
    text = {"lost": FIELD_COLUMNS["lost"], "stack": FIELD_COLUMNS["stack"]}
    table = fields.field_table_schema()
    columns = {**fixed, **text}
    columns.update((name, dtype) for name, dtype in table.items() if name not in columns)
    return pl.Schema({**columns, **ATTRIBUTION})


def layout(names: list[str], schema: pl.Schema | None = None) -> list[tuple[str, object]]:
    """The event file's columns for a frame with the columns `names`, in order: (name, the
    dtype to cast to or to fill with nulls, or None for a column of the frame's own)."""
    schema = schema or output_schema()
    return [*((n, t) for n, t in schema.items() if n not in ATTRIBUTION),
            *((n, None) for n in names if n not in schema),
            *ATTRIBUTION.items()]


def to_output_schema(frame: pl.DataFrame, schema: pl.Schema | None = None) -> pl.DataFrame:
    """`frame` in the event file's columns (:func:`layout`). Columns are placed, not
    selected: a select runs through the query engine, which copied whole frames."""
    return pl.DataFrame([_column(frame, n, t) for n, t in layout(frame.columns, schema)])


def _column(frame: pl.DataFrame, name: str, dtype) -> pl.Series:
    if name not in frame.columns:
        return _nulls(dtype, frame.height).alias(name)
    column = frame.get_column(name)
    return column if dtype is None or column.dtype == dtype else column.cast(dtype)


def output_columns(names: list[str]) -> list[pl.Expr]:
    """:func:`to_output_schema` as expressions, for a lazy frame with the columns `names`
    (absent columns as null literals, which a streaming sink never builds whole)."""
    present = set(names)
    return [pl.lit(None, dtype=t).alias(n) if n not in present
            else pl.col(n) if t is None else pl.col(n).cast(t)
            for n, t in layout(names)]


def own_columns(frame: pl.DataFrame, schema: pl.Schema | None = None) -> list[str]:
    """The columns of `frame` the event file has no place for in `schema`."""
    return [n for n, t in layout(frame.columns, schema) if t is None]


_NULLS: dict = {}


def _nulls(dtype: pl.DataType, height: int) -> pl.Series:
    """`height` nulls of `dtype`: a slice of one cached column. A slice is a view: a new
    null column for each batch and each absent field was most of the time spent placing
    the columns, in a profile of the streamed ingest."""
    cached = _NULLS.get(dtype)
    if cached is None or cached.len() < height:
        cached = _NULLS[dtype] = pl.repeat(None, max(height, 1 << 16), dtype=dtype, eager=True)
    return cached.slice(0, height)


def write_event_file(table: pl.DataFrame, output: Path) -> None:
    """Write `table` in the event file's columns beside `output`, then rename: no
    half-written file at `output`."""
    with beside(output) as tmp:
        # streamed from the table, the absent columns as literals: a null column of the
        # table's height for each absent field added ~45 MB to a 1.78 M-row ingest
        table.lazy().select(output_columns(table.columns)).sink_parquet(tmp, **OUTPUT_OPTIONS)
        os.replace(tmp, output)


@contextmanager
def beside(output: Path):
    """A temporary name beside `output` (the caller renames it to `output` when the file is
    whole), removed on the way out whatever happens. Ctrl-C: polars ends a running write
    with KeyboardInterrupt at once, and Python may raise a second one at its next bytecode,
    inside this clean-up: an exit handler removes the file then."""
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    atexit.register(tmp.unlink, missing_ok=True)
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)
        atexit.unregister(tmp.unlink)
