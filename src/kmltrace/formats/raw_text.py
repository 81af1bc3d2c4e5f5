"""The ``raw`` text of binary-decoded events that carry none, rendered from their typed columns.

The binary decoders (trace.dat, raw ring-buffer pages) leave ``raw`` null for events whose
every field is a typed column (``raw_text="untyped"``, their default): building ~1.8 M such
texts that nobody reads was a third of the decode time. Readers that show text (the TUI's
detail column, an evidence line, a search) render it here for the rows they show, as
``name=value ...`` in column order: unsigned 64-bit scalars in hex, lists as ``[a,b,...]``.
"""

from __future__ import annotations

import polars as pl

from kmltrace.schema import CORE_COLUMNS, FIELD_COLUMNS

#: core columns that are tracepoint fields too (page_fault_user's address, ip, error_code)
_FIELD_LIKE_CORE = ("vector", "ip", "address", "error_code")


def field_columns(schema: pl.Schema | dict) -> list[str]:
    """The typed event-field columns of a table, in its column order."""
    return [c for c in schema
            if c in FIELD_COLUMNS or c.startswith("target_")
            or (c in CORE_COLUMNS and c in _FIELD_LIKE_CORE)]


def _value_text(name: str, dtype: pl.DataType) -> pl.Expr:
    col = pl.col(name)
    if dtype == pl.UInt64:
        # polars has no integer-to-hex cast: the decoder's vectorised renderer does it
        return col.map_batches(_hex_series, return_dtype=pl.String)
    if dtype == pl.Boolean:
        return col.cast(pl.UInt8).cast(pl.String)     # the kernel prints a bool as 0/1
    if isinstance(dtype, (pl.List, pl.Array)):
        return pl.lit("[") + col.cast(pl.List(pl.String)).list.join(",") + pl.lit("]")
    return col.cast(pl.String)


def _hex_series(values: pl.Series) -> pl.Series:
    from kmltrace.formats.ringbuffer import hex_strings

    out = hex_strings(values.fill_null(0).to_numpy())
    return out.set(values.is_null(), None) if values.null_count() else out


def raw_text_expr(schema: pl.Schema | dict) -> pl.Expr:
    """``raw`` where the row has it, else ``name=value ...`` of the row's non-null typed
    fields (null when it has none)."""
    parts = [pl.when(pl.col(c).is_not_null()).then(pl.lit(f"{c}=") + _value_text(c, schema[c]))
             for c in field_columns(schema)]
    if "raw" not in schema:
        base = pl.lit(None, dtype=pl.String)
    else:
        base = pl.col("raw").cast(pl.String)
    if not parts:
        return base.alias("raw")
    rendered = pl.concat_str(parts, separator=" ", ignore_nulls=True)
    return pl.coalesce(base, pl.when(rendered != "").then(rendered)).alias("raw")


def with_raw_text(frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` with ``raw`` filled in where it is null (call it on the rows to be shown)."""
    if "raw" in frame.columns and frame["raw"].null_count() == 0:
        return frame
    return frame.with_columns(raw_text_expr(frame.schema))
