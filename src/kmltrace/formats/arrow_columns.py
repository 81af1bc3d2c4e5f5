"""Event-table columns built in memory that polars takes over without copying it.

Used by the ring-buffer decoder when its C accelerator (``formats/_ringscan.c``) is built: the
accelerator allocates zeroed memory (``block``), numpy fills it, and ``export_array`` hands it
to polars through the Arrow C data interface (``pl.Series(obj)`` with ``__arrow_c_array__``).
A polars gather would write each column into fresh pages of its own, and on this machine the
page faults of a 1.8 M-row table cost more than computing it. The pure path builds the same
columns with polars gathers (the reference; tests/formats/test_ringscan.py compares them).

Strings are Arrow ``Utf8View`` (polars' own layout): a 16-byte view per row, inline for
strings up to 12 bytes, else pointing into one data buffer; lists are ``LargeList``.
"""

from __future__ import annotations

import numpy as np
import polars as pl

_ARROW_INTS = {np.dtype(np.int8): "c", np.dtype(np.uint8): "C", np.dtype(np.int16): "s",
               np.dtype(np.uint16): "S", np.dtype(np.int32): "i", np.dtype(np.uint32): "I",
               np.dtype(np.int64): "l", np.dtype(np.uint64): "L"}


class _Exported:
    """An Arrow array spec that polars imports (PyCapsule interface)."""

    def __init__(self, rs, spec: tuple):
        self.rs, self.spec = rs, spec

    def __arrow_c_array__(self, requested_schema=None):
        return self.rs.export_array(self.spec)


def _filled(rs, values: np.ndarray):
    """A Block holding `values`' bytes."""
    block = rs.block(values.nbytes)
    if values.nbytes:
        np.frombuffer(block, values.dtype)[:] = values.ravel()
    return block


def _block_of(rs, values: np.ndarray):
    """The accelerator Block that `values` is exactly (all of it, in order), else None."""
    base = values
    while isinstance(base, np.ndarray):
        base = base.base
    if base is None or type(base).__name__ != "Block" or not values.flags.c_contiguous:
        return None
    whole = np.frombuffer(base, np.uint8)
    if values.nbytes != whole.nbytes or (values.nbytes and
                                         values.ctypes.data != whole.ctypes.data):
        return None
    return base


def _validity(rs, valid: np.ndarray | None):
    """(bitmap Block or None, null count) of a boolean row mask."""
    if valid is None:
        return None, 0
    nulls = int(valid.size - np.count_nonzero(valid))
    if nulls == 0:
        return None, 0
    return _filled(rs, np.packbits(valid, bitorder="little")), nulls


def numeric_column(rs, name: str, n: int, dtype, parts: list) -> pl.Series:
    """An integer column of `n` rows with values[rows] = v for each (rows, v) of `parts`, null
    where no part writes: zeroed accelerator memory (rows no part writes stay untouched
    pages) and a validity bitmap."""
    dtype = np.dtype(dtype)
    written = sum(rows.size for rows, _ in parts)
    # a column of a rare field: 4 KiB pages, so that a value written here and there does not
    # make a whole 2 MiB huge page resident (and zeroed)
    block = rs.block(n * dtype.itemsize, written * 16 >= n)
    values = np.frombuffer(block, dtype)
    covered = np.zeros(n, bool)
    for rows, v in parts:
        values[rows] = v
        covered[rows] = True
    del values
    bitmap, nulls = _validity(rs, covered)
    return pl.Series(name, _Exported(rs, (_ARROW_INTS[dtype], name, n, nulls,
                                          [bitmap, block], [])))


def view_table(strings: list[str | None]) -> tuple[np.ndarray, bytes, np.ndarray]:
    """The 16-byte Utf8View of each string (None: an empty view, marked null), the data
    buffer of the strings longer than 12 bytes, and which entries are null."""
    table = np.zeros((max(len(strings), 1), 16), np.uint8)
    data = bytearray()
    null = np.zeros(max(len(strings), 1), bool)
    for i, text in enumerate(strings):
        if text is None:
            null[i] = True
            continue
        raw = text.encode("utf-8")
        row = bytearray(len(raw).to_bytes(4, "little"))
        if len(raw) <= 12:
            row += raw.ljust(12, b"\0")
        else:
            row += raw[:4] + (0).to_bytes(4, "little") + len(data).to_bytes(4, "little")
            data += raw
        table[i] = np.frombuffer(bytes(row), np.uint8)
    return table, bytes(data), null


def string_column(rs, name: str, table: tuple, index: np.ndarray,
                  valid: np.ndarray | None = None) -> pl.Series:
    """Row i is the string of table entry index[i] (a view_table), null where that entry is
    None or `valid` is False."""
    views_table, data, null = table
    index = np.ascontiguousarray(index)
    if index.dtype not in (np.int16, np.uint16, np.int32, np.int64):
        index = index.astype(np.int64)
    n = index.size
    views = rs.block(16 * n)
    rs.take_rows(views_table, 16, index, index.itemsize, views)
    if null.any():
        row_valid = ~null[index]
        valid = row_valid if valid is None else (valid & row_valid)
    bitmap, nulls = _validity(rs, valid)
    buffers = [bitmap, views]
    if data:
        buffers.append(_filled(rs, np.frombuffer(data, np.uint8)))
        buffers.append(_filled(rs, np.array([len(data)], np.int64)))
    else:
        buffers.append(rs.block(0))
    return pl.Series(name, _Exported(rs, ("vu", name, n, nulls, buffers, [])))


def list_column(rs, name: str, rows: np.ndarray, values: np.ndarray, n: int) -> pl.Series | None:
    """A List column of `n` rows: rows[i] (ascending) holds the row values[i] of a 2-D integer
    array, the other rows are null. None when the values' type has no Arrow twin here."""
    fmt = _ARROW_INTS.get(values.dtype)
    if fmt is None or values.ndim != 2 or rows.size != values.shape[0]:
        return None
    width = values.shape[1]
    counts = np.zeros(n + 1, np.int64)
    counts[rows + 1] = width
    offsets = rs.block(8 * (n + 1))
    np.cumsum(counts, out=np.frombuffer(offsets, np.int64))
    covered = np.zeros(n, bool)
    covered[rows] = True
    bitmap, nulls = _validity(rs, covered)
    child = (fmt, "item", int(values.size), 0, [None, _block_of(rs, values) or
                                                   _filled(rs, values)], [])
    return pl.Series(name, _Exported(rs, ("+L", name, n, nulls, [bitmap, offsets], [child])))


class Text:
    """Utf8View strings in accelerator memory: 16-byte views and one data block (long strings
    name it as variadic buffer 0)."""

    def __init__(self, rs, n: int, views, data, used: int, valid: np.ndarray | None = None):
        self.rs, self.n, self.views, self.data, self.used, self.valid = \
            rs, n, views, data, used, valid

    def __len__(self) -> int:
        return self.n

    def series(self, name: str = "") -> pl.Series:
        bitmap, nulls = _validity(self.rs, self.valid)
        buffers = [bitmap, self.views]
        if self.used:
            buffers += [self.data, _filled(self.rs, np.array([self.used], np.int64))]
        else:
            buffers.append(self.rs.block(0))
        return pl.Series(name, _Exported(self.rs, ("vu", name, self.n, nulls, buffers, [])))


def text_of(rs, series: pl.Series) -> Text:
    """A String series as :class:`Text` (vectorised: all its bytes are the data block)."""
    k = series.len()
    valid = series.is_not_null().to_numpy()
    lengths = series.str.len_bytes().fill_null(0).to_numpy().astype(np.int64)
    data = np.frombuffer(series.fill_null("").str.join("").item().encode("utf-8"), np.uint8)
    starts = np.cumsum(lengths) - lengths
    views = np.zeros((k, 16), np.uint8)
    views[:, 0:4] = lengths.astype("<u4").view(np.uint8).reshape(k, 4)
    if data.size:
        # the first 12 bytes of each string (inline), zero past its end
        at = starts[:, None] + np.arange(12)
        head = np.where(np.arange(12) < lengths[:, None], data[np.minimum(at, data.size - 1)], 0)
        long = lengths > 12
        views[:, 4:16] = head
        views[long, 8:12] = 0                       # buffer index 0: the data block
        views[long, 12:16] = starts[long].astype("<u4").view(np.uint8).reshape(-1, 4)
    return Text(rs, k, _filled(rs, views), _filled(rs, data), int(data.size),
                valid if not valid.all() else None)


def assemble_text(rs, name: str, parts: list, n: int) -> pl.Series | None:
    """One String column of `n` rows from (rows, Text or String series) parts, the views put
    in place in C, each part's data block one variadic buffer; rows no part covers are null.
    None when a part's strings pass the 4 GiB that views can address."""
    if any(not isinstance(text, Text) and text.str.len_bytes().sum() > 0xFFFFFFFF
           for _, text in parts):
        return None
    texts = [(rows, text if isinstance(text, Text) else text_of(rs, text)) for rows, text in parts]
    if any(text.used > 0xFFFFFFFF for _, text in texts):
        return None
    # huge pages when most rows are written; else 4 KiB pages, so that a row written here
    # and there does not make a 2 MiB page resident
    views = rs.block(16 * n, sum(rows.size for rows, _ in texts) * 16 >= n)
    covered = np.zeros(n, bool)
    data, sizes = [], []
    for rows, text in texts:
        index = len(data) if text.used else 0
        rows = np.ascontiguousarray(rows, np.int64)
        rs.scatter_views(views, rows, text.views, index)
        if text.valid is None:
            covered[rows] = True
        else:
            covered[rows] = text.valid
        if text.used:
            data.append(text.data)
            sizes.append(text.used)
    bitmap, nulls = _validity(rs, covered)
    buffers = [bitmap, views, *data, _filled(rs, np.array(sizes, np.int64))]
    return pl.Series(name, _Exported(rs, ("vu", name, n, nulls, buffers, [])))


def rendered_text(rs, n: int, literals: list[str], columns: list[np.ndarray],
                  hex_text: list[bool]) -> Text | None:
    """Row i is ``literals[0] columns[0][i] literals[1] ... literals[-1]`` (integers in
    decimal, or ``0x`` hex where `hex_text` says so), rendered by the accelerator; None when a
    column is not an integer array or the text would pass the views' 4 GiB of offsets."""
    specs = []
    for values, hex_ in zip(columns, hex_text):
        if not isinstance(values, np.ndarray) or values.ndim != 1 or values.dtype.kind not in "iu":
            return None
        values = np.ascontiguousarray(values)
        specs.append((values, values.itemsize, 2 if hex_ else 0 if values.dtype.kind == "i"
                      else 1))
    try:
        views, data, used = rs.render_text(n, [lit.encode() for lit in literals], specs, 0)
    except (ValueError, MemoryError):   # the polars rendering needs less address space
        return None
    return Text(rs, n, views, data, used)
