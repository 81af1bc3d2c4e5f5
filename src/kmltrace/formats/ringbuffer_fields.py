"""Event fields of ring-buffer records -> column pieces, and their `raw` text.

Every fixed field of one event type's records is one gather from the page buffer at (record
start + field offset); strings, arrays and dynamic (``__data_loc``) fields are cut out of the
records; the `raw` text is rendered from the same values; the irq-info flags text comes from
one 65536-entry table. Used by :mod:`kmltrace.formats.ringbuffer`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from kmltrace.formats import arrow_columns
from kmltrace.formats.event_format import EventFormat, Field
from kmltrace.schema import ALL_KNOWN_COLUMNS, COMMON_COLUMNS, FIELD_COLUMNS, PROVENANCE_COLUMNS

# -- gathering fields -----------------------------------------------------------------------------

class Reads:
    """Typed little-endian reads at any byte index of the decode buffer.

    The buffer is seen once per (size, signedness) as overlapping integers, one starting at
    every byte (a strided view, no copy), so one field of all records of a type is a single
    fancy-index gather: no per-type block of record bytes is copied first."""

    def __init__(self, buf: np.ndarray, rs=None):
        self.buf = buf
        self.rs = rs        # the C accelerator, if any
        self._views: dict[tuple[int, bool], np.ndarray] = {}

    def view(self, size: int, signed: bool = False) -> np.ndarray:
        key = (size, signed)
        found = self._views.get(key)
        if found is None:
            dtype = np.dtype(f"<{'i' if signed else 'u'}{size}")
            count = self.buf.size - size + 1
            found = np.ndarray((count,), dtype, buffer=self.buf, strides=(1,)) if count > 0 \
                else np.zeros(1, dtype)
            self._views[key] = found
        return found

    def ints(self, at: np.ndarray, size: int, signed: bool = False) -> np.ndarray:
        """Integers of `size` bytes at buffer indices `at` (any shape); sizes other than
        1, 2, 4, 8 read as unsigned 64-bit."""
        if size not in (1, 2, 4, 8):
            return self._odd_size(at, size)
        view = self.view(size, signed)
        # a corrupt record may point anywhere: keep reads inside the buffer
        if at.size and (at.min() < 0 or at.max() >= view.size):
            at = np.clip(at, 0, view.size - 1)
        return view[at]

    def _odd_size(self, at: np.ndarray, size: int) -> np.ndarray:
        buf = self.buf
        at = np.clip(at, 0, max(buf.size - size, 0))
        if not buf.size:
            return np.zeros(at.shape, np.uint64)
        out = np.zeros(at.shape, np.uint64)
        for i in range(min(size, 8)):
            out |= buf[np.minimum(at + i, buf.size - 1)].astype(np.uint64) << np.uint64(8 * i)
        return out

    def bytes_block(self, at: np.ndarray, width: int) -> np.ndarray:
        """`width` bytes at each index of `at`, as an (n, width) uint8 array."""
        buf = self.buf
        if width <= 0 or buf.size < width:
            out = np.zeros((at.size, max(width, 0)), np.uint8)
            if width > 0 and buf.size:
                idx = np.clip(at[:, None] + np.arange(width), 0, buf.size - 1)
                out[:] = np.where(at[:, None] + np.arange(width) < buf.size, buf[idx], 0)
            return out
        if self.rs is not None:
            at = np.ascontiguousarray(at, np.int64)
            return np.frombuffer(self.rs.gather_blocks(buf, at, width), np.uint8).reshape(
                at.size, width)
        windows = np.lib.stride_tricks.sliding_window_view(buf, width)
        return windows[np.clip(at, 0, buf.size - width)]


def _cut_strings(mat: np.ndarray) -> pl.Series:
    """Rows of bytes cut at the first NUL, as a String series (non-UTF-8 bytes escaped)."""
    n, width = mat.shape
    if width == 0 or n == 0:
        return pl.Series([""] * n, dtype=pl.String)
    mat = np.array(mat, np.uint8, copy=True)
    after_nul = np.logical_or.accumulate(mat == 0, axis=1)
    mat[after_nul] = 0
    odd = np.flatnonzero((mat >= 0x80).any(axis=1))
    texts = []
    if odd.size:
        texts = [bytes(mat[i]).rstrip(b"\0").decode("utf-8", "backslashreplace") for i in odd]
        mat[odd] = 0
    series = pl.Series(mat.view(f"S{width}").ravel()).cast(pl.String)
    if odd.size:
        series = series.scatter(odd, texts)
    return series


def _strings(buf: np.ndarray, start: np.ndarray, length: np.ndarray) -> pl.Series:
    """Variable-length byte strings at `start` of `length` bytes, cut at the first NUL."""
    n = start.size
    width = int(length.max()) if n else 0
    if width == 0:
        return pl.Series([""] * n, dtype=pl.String)
    idx = start[:, None] + np.arange(width)
    inside = np.arange(width) < length[:, None]
    mat = np.where(inside, buf[np.clip(idx, 0, buf.size - 1)], 0).astype(np.uint8)
    return _cut_strings(mat)


_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", np.uint8)


def hex_strings(values: np.ndarray) -> pl.Series:
    """'0x...' renderings of unsigned 64-bit values, vectorised."""
    v = values.astype(np.uint64)
    shifts = np.arange(60, -4, -4, dtype=np.uint64)
    nibbles = ((v[:, None] >> shifts) & np.uint64(15)).astype(np.uint8)
    chars = _HEX_DIGITS[nibbles]
    s = pl.Series(np.ascontiguousarray(chars).view("S16").ravel()).cast(pl.String)
    return ("0x" + s.str.strip_chars_start("0").replace("", "0")).rename("")


# columns that are not event fields: a field with one of these names gets another name
_RESERVED = {"ts_ns", "seq", "cpu", "pid", "comm", "source", "system", "event", "lost",
             *PROVENANCE_COLUMNS, *COMMON_COLUMNS}
# the names the text parsers (formats/fields.py) give such fields; None: the field repeats
# the current task (common_pid) and is left out
_RENAMES: dict[str, dict[str, str | None]] = {
    "signal_generate": {"comm": "target_comm", "pid": "target_pid"},
    "sched_process_exec": {"pid": None},
    "sched_process_exit": {"comm": None, "pid": None},
    "irq_handler_exit": {"ret": "ret_irq"},
}


def _column_dtype(f: Field) -> pl.DataType:
    known = FIELD_COLUMNS.get(f.name)
    if known is not None:
        return known
    if f.type == "bool":
        return pl.Boolean
    size = f.element_size or f.size
    bits = {1: 8, 2: 16, 4: 32, 8: 64}.get(size, 64)
    return getattr(pl, f"{'Int' if f.signed else 'UInt'}{bits}")


@dataclass
class Piece:
    """One event type's values of one column: numpy (numbers, fixed arrays) or a polars
    Series (strings, variable lists)."""

    name: str
    values: object
    dtype: pl.DataType


_RAW_SLICE = 1 << 18

# events whose unsigned longs are numbers more than addresses (sys_exit's ret is signed)
_DECIMAL_RAW = {"sys_enter"}


def _raw_template(parts: list[str]) -> str:
    """Join the fields' "name={}" pieces: array elements with ",", fields with " "."""
    out = []
    for i, part in enumerate(parts):
        out.append(part)
        if i + 1 < len(parts):
            inside_array = "[" in part and not part.endswith("]") or part == "{}"
            out.append("," if inside_array else " ")
    return "".join(out)


def _column_name(fmt: EventFormat, f: Field) -> str | None:
    """The column a field lands in (None: left out, it repeats the current task)."""
    renames = _RENAMES.get(fmt.name, {})
    if f.name in renames:
        return renames[f.name]
    # a field named like a core column (signal_generate's pid, comm) must not replace it
    return f"target_{f.name}" if f.name in _RESERVED else f.name


def _all_typed(fmt: EventFormat) -> bool:
    """Every field of the event is a column the schema knows (its raw text adds nothing)."""
    names = [_column_name(fmt, f) for f in fmt.own_fields]
    return all(n is None or n in ALL_KNOWN_COLUMNS or n.startswith("target_") for n in names)


def field_columns(reads: Reads, fmt: EventFormat, start: np.ndarray, length: np.ndarray,
                   long_size: int, raw_text: bool = True
                   ) -> tuple[list[Piece], pl.Series | None]:
    """The typed columns of one event type's records and their `raw` text.

    Every fixed field is one gather from the buffer at (record start + field offset)."""
    pieces: list[Piece] = []
    # ("name={}", column key, values) of the raw text, rendered only when it is wanted
    raw_parts: list[tuple[str, str, object]] = []
    n = start.size
    end = start + length
    for k, f in enumerate(fmt.own_fields):
        name = _column_name(fmt, f)
        if name is None:
            continue
        key = f"c{k}"
        label = f"{f.name}={{}}"
        if f.dynamic or f.array_len == 0:
            if f.dynamic:
                desc = reads.ints(start + f.offset, 4).astype(np.int64)
                off = desc & 0xFFFF
                if f.rel_loc:
                    off = off + f.offset + f.size
                at = start + off
                n_bytes = desc >> 16
            else:   # a flexible array: runs to the end of the record
                at = start + f.offset
                n_bytes = np.maximum(length - f.offset, 0)
            # never read past the record
            n_bytes = np.clip(np.minimum(n_bytes, end - at), 0, 1 << 16)
            if f.is_string or f.element_size <= 1:
                series = _strings(reads.buf, at, n_bytes)
                if fmt.name == "print" and f.name == "buf":
                    # trace_marker text ends in the newline the text formats end the line with
                    series = series.str.strip_suffix("\n")
                pieces.append(Piece(name, series, pl.String))
                raw_parts.append((label, key, series))
            else:
                es = f.element_size
                count = n_bytes // es
                rows = np.repeat(np.arange(n), count)
                first = np.repeat(np.cumsum(count) - count, count)
                idx = np.repeat(at, count) + (np.arange(rows.size) - first) * es
                vals = reads.ints(idx, es).astype(np.uint64)
                grouped = (pl.DataFrame({"r": rows, "v": vals})
                           .group_by("r", maintain_order=True).agg("v"))
                series = pl.DataFrame({"r": np.arange(n)}).join(grouped, on="r", how="left")["v"]
                pieces.append(Piece(name, series, series.dtype))
                raw_parts.append((f"{f.name}=[{{}}]", key, series))
            continue
        if f.array_len and f.is_string:
            series = _cut_strings(reads.bytes_block(start + f.offset, f.size))
            pieces.append(Piece(name, series, pl.String))
            raw_parts.append((label, key, series))
            continue
        if f.array_len:
            es = f.element_size or 1
            count = f.array_len
            if es in (1, 2, 4, 8) and es * count <= f.size:
                # the array's bytes of every record in one row gather, seen as its elements
                mat = reads.bytes_block(start + f.offset, es * count).view(
                    f"<{'i' if f.signed else 'u'}{es}")
            else:
                mat = np.zeros((n, count), np.uint64)
            dtype = _column_dtype(f)
            inner = dtype.inner if isinstance(dtype, pl.List) else dtype
            pieces.append(Piece(name, mat, pl.List(inner)))
            for j in range(count):
                raw_parts.append(((f"{f.name}=[" if j == 0 else "") + "{}" +
                                  ("]" if j == count - 1 else ""), f"{key}_{j}", mat[:, j]))
            continue
        size = f.size if f.size in (1, 2, 4, 8) else 8
        values = reads.ints(start + f.offset, size, f.signed)
        dtype = _column_dtype(f)
        if name == "prev_state" and dtype == pl.String:
            series = _task_state(values.astype(np.int64), fmt.print_fmt)
            pieces.append(Piece(name, series, pl.String))
            raw_parts.append((label, key, series))
            continue
        if dtype == pl.String:
            dtype = pl.Int64 if f.signed else pl.UInt64
        pieces.append(Piece(name, values, dtype))
        hex_text = not f.signed and size == long_size and fmt.name not in _DECIMAL_RAW
        raw_parts.append((label, key, (values, hex_text)))
    if raw_parts and (raw_text or not _all_typed(fmt)):
        raw = _render_raw(raw_parts, n, reads.rs)
    elif raw_parts:
        raw = None      # no text: the event's fields are all columns
    else:
        raw = pl.repeat("", n, dtype=pl.String, eager=True)
    return pieces, raw


def _render_raw(raw_parts: list[tuple[str, str, object]], n: int, rs=None
                ) -> pl.Series | arrow_columns.Text:
    """The `name=value ...` text of one event type's records (unsigned longs in hex); with
    the C accelerator `rs`, in C when every field is an integer (most events)."""
    if rs is not None:
        template = _raw_template([t for t, _, _ in raw_parts])
        literals = template.split("{}")
        if len(literals) == len(raw_parts) + 1:
            values = [v[0] if isinstance(v, tuple) else v for _, _, v in raw_parts]
            hex_text = [isinstance(v, tuple) and v[1] for _, _, v in raw_parts]
            text = arrow_columns.rendered_text(rs, n, literals, values, hex_text)
            if text is not None:
                return text     # an arrow_columns.Text: the decode puts it in place
    raw_cols: dict[str, object] = {}
    for _, key, values in raw_parts:
        if isinstance(values, tuple):
            values, hex_text = values
            values = hex_strings(values) if hex_text else values
        raw_cols[key] = values
    # array elements join with ",", fields with " "
    template = _raw_template([t for t, _, _ in raw_parts])
    exprs = [pl.col(key).cast(pl.List(pl.String)).list.join(",")
             if isinstance(raw_cols[key], pl.Series) and isinstance(raw_cols[key].dtype, pl.List)
             else pl.col(key) for _, key, _ in raw_parts]
    frame = pl.DataFrame(raw_cols)
    del raw_cols
    text = pl.format(template, *exprs)
    # in slices: the per-field texts pl.format builds stay small
    return pl.concat([frame.slice(at, _RAW_SLICE).select(text).to_series()
                      for at in range(0, max(n, 1), _RAW_SLICE)], rechunk=True)


# sched_switch prev_state, as the print fmt's __print_flags renders it
_STATE_FLAGS = [(0x01, "S"), (0x02, "D"), (0x04, "T"), (0x08, "t"), (0x10, "X"), (0x20, "Z"),
                (0x40, "P"), (0x80, "I")]


def _task_state(state: np.ndarray, print_fmt: str) -> pl.Series:
    import re

    pairs = [(int(v, 16), s) for v, s in re.findall(r'\{\s*0x([0-9a-fA-F]+),\s*"([^"]*)"\s*\}',
                                                     print_fmt)] or _STATE_FLAGS
    mask = 0
    for v, _ in pairs:
        mask |= v
    # the kernel prints ((TASK_REPORT_MAX) << 1) - 1 bits, and a '+' for the preempt bit
    report_max = 1 << (mask.bit_length())
    masked = state & (report_max - 1)
    uniq, inverse = np.unique(np.stack([masked, (state & report_max) != 0], axis=1), axis=0,
                              return_inverse=True)
    names = []
    for m, plus in uniq:
        text = "|".join(s for v, s in pairs if m & v) if m else "R"
        names.append(text + ("+" if plus else ""))
    return pl.Series(names, dtype=pl.String).gather(inverse.ravel())


# -- the irq-info flags column --------------------------------------------------------------------

def flag_table() -> pl.Series:
    """The 5-character latency flags for every (common_preempt_count << 8 | common_flags),
    as the kernel prints them (trace_print_lat_fmt)."""
    heads, tails = _flag_parts()
    return pl.Series([h + t for t in tails for h in heads], dtype=pl.String)


def flag_views() -> tuple:
    """:func:`flag_table` as an arrow_columns.view_table, built by numpy (65536 entries)."""
    heads, tails = _flag_parts()
    table = np.zeros((256, 256, 16), np.uint8)      # (preempt_count, flags, view)
    table[:, :, 0] = 5
    table[:, :, 4:7] = np.frombuffer("".join(heads).encode(), np.uint8).reshape(256, 3)
    table[:, :, 7:9] = np.frombuffer("".join(tails).encode(), np.uint8).reshape(256, 1, 2)
    return table.reshape(65536, 16), b"", np.zeros(65536, bool)


def _flag_parts() -> tuple[list[str], list[str]]:
    """The flags' first three characters for each common_flags and the last two for each
    common_preempt_count."""
    heads = []
    for flags in range(256):
        nmi, hard, soft, bh = flags & 0x40, flags & 0x08, flags & 0x10, flags & 0x80
        irqs = "D" if flags & 1 and bh else "d" if flags & 1 else "b" if bh else "."
        need = {0x04 | 0x02 | 0x20: "B", 0x04 | 0x20: "N", 0x02 | 0x20: "L", 0x04 | 0x02: "b",
                0x04: "n", 0x20: "p", 0x02: "l"}.get(flags & 0x26, ".")
        hs = "Z" if nmi and hard else "z" if nmi else "H" if hard and soft else \
            "h" if hard else "s" if soft else "."
        heads.append(irqs + need + hs)
    tails = [(f"{pc & 0xF:x}" if pc & 0xF else ".") + (f"{pc >> 4:x}" if pc >> 4 else ".")
             for pc in range(256)]
    return heads, tails


_FLAGS: pl.Series | None = None


def flags_column(lat_key: np.ndarray) -> pl.Series:
    """The flags text of each (preempt_count << 8 | flags) key: one gather from a table."""
    global _FLAGS
    if _FLAGS is None:
        _FLAGS = flag_table()
    return _FLAGS.gather(lat_key)
