"""Decode ftrace ring-buffer pages (trace_pipe_raw, trace.dat CPU data) into the event table.

No per-event Python. A CPU's pages are one 2-D array of 32-bit words (page x word), read in
place. All pages are walked together: iteration k finds the k-th record of every page still
going, computing the step to the next record from the record header's type_len only where a
record starts (the loop runs as often as the fullest page has records, ~150 for 4 KiB pages,
never once per record). Timestamps are a cumulative sum of the deltas, restarted at each page
header and absolute-time record. The CPUs are merged by one stable sort on time; each event
type's records are gathered as one (records x bytes) block, every fixed field is a slice of
it; numeric columns are filled in place at full length, string/list columns and the raw text
are put in time order with one gather each.

Record layout (kernel/trace/ring_buffer.c): header word = type_len:5 | time_delta:27.
type_len 1..28: data of type_len*4 bytes follows; 0: the next word is the length (+4) and
data follows it; 29: padding (time_delta 0: the rest of the page is empty, else length in the
next word); 30: time extend (delta = next word << 27 | time_delta); 31: absolute timestamp.
Page header: u64 timestamp, local_t commit (bytes of data; bit 31 RB_MISSED_EVENTS, bit 30
RB_MISSED_STORED: the missed count is stored as a long right after the data).
"""

from __future__ import annotations

import ctypes
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from kmltrace.accel import use_accelerator
from kmltrace.errors import InputError, KmltraceError
from kmltrace.formats import arrow_columns
from kmltrace.formats.event_format import EventFormat, Field, PageHeader
from kmltrace.schema import (ALL_KNOWN_COLUMNS, COMMON_COLUMNS, FIELD_COLUMNS, LOST_EVENTS,
                             PROVENANCE_COLUMNS)

RB_MISSED_EVENTS = 1 << 31
RB_MISSED_STORED = 1 << 30
_COMMIT_MASK = (1 << 30) - 1
_TYPE_PADDING, _TYPE_TIME_EXTEND, _TYPE_TIME_STAMP = 29, 30, 31
_END = 1 << 40          # a step that leaves any page: "no further record here"


@dataclass
class CpuSegment:
    """One CPU's pages inside the decode buffer."""

    cpu: int
    start: int              # index in the buffer of the first page's first byte
    length: int             # bytes of page data
    file_offset: int        # the file offset `start` stands for (the `offset` column)
    label: str = ""         # the file named in errors about these pages


@dataclass
class Decoded:
    events: pl.DataFrame
    errors: list = field(default_factory=list)
    lost_events: int = 0
    lost_unknown: int = 0       # pages whose missed-events count the kernel could not store
    pages: int = 0
    damaged_pages: int = 0
    damaged_records: int = 0


@dataclass
class _Records:
    """The records of one CPU, in page order (parallel arrays)."""

    ts: np.ndarray
    kind: np.ndarray        # event type id, or -1 for a lost-events marker
    start: np.ndarray       # buffer index of the record's data (event payload)
    length: np.ndarray      # payload bytes
    lost: np.ndarray        # missed-events count of lost markers (-1 unknown)


# -- walking the pages ----------------------------------------------------------------------------

def _walk_cpu(buf: np.ndarray, seg: CpuSegment, header: PageHeader, decoded: Decoded,
              path: str, rs=None) -> _Records:
    """One CPU's records; `rs` is the C accelerator (None: the numpy walk)."""
    ps = header.page_size
    n_pages = seg.length // ps
    tail = seg.length - n_pages * ps
    if tail:
        decoded.errors.append(InputError(
            f"cpu{seg.cpu}: truncated page ({tail} of {ps} bytes), ignored",
            path=seg.label or path, offset=seg.file_offset + n_pages * ps))
        decoded.damaged_pages += 1
    decoded.pages += n_pages
    empty = _Records(*(np.zeros(0, np.int64) for _ in range(5)))
    if n_pages == 0:
        return empty
    if rs is not None:
        try:
            got = rs.walk(buf, seg.start, n_pages, ps, header.timestamp_offset,
                          header.commit_offset, header.commit_size, header.data_offset,
                          header.data_size)
        except ValueError:      # a layout the C walk does not take: the numpy walk does
            got = None
        if got is not None:
            return _records_of_c_walk(got, buf, seg, header, decoded, path)
    pages = buf[seg.start:seg.start + n_pages * ps]
    words = pages.view("<u4").reshape(n_pages, ps // 4)
    page_ts = pages.view("<u8").reshape(n_pages, ps // 8)[:, header.timestamp_offset // 8]
    if header.commit_size == 8:
        commit = pages.view("<u8").reshape(n_pages, ps // 8)[:, header.commit_offset // 8]
    else:
        commit = words[:, header.commit_offset // 4].astype(np.uint64)
    # only the low 32 bits count: the kernel adds RB_MISSED_EVENTS (an int, 1 << 31) to a
    # signed 64-bit local_t, which sign-extends it into the high half (seen on 6.18)
    commit = (commit & np.uint64(0xFFFFFFFF)).astype(np.int64)
    data_len = commit & _COMMIT_MASK
    missed = (commit & RB_MISSED_EVENTS) != 0
    stored = (commit & RB_MISSED_STORED) != 0

    bad = data_len > header.data_size
    if bad.any():
        _report_bad_headers(np.flatnonzero(bad), commit, seg, ps, decoded, path)
        data_len = np.where(bad, 0, data_len)
        missed &= ~bad
        stored &= ~bad

    # the missed-events count sits right after the data when RB_MISSED_STORED says so
    lost = np.where(missed, -1, 0).astype(np.int64)
    room = stored & (data_len + header.commit_size <= header.data_size)
    if room.any():
        at = np.flatnonzero(room) * ps + header.data_offset + data_len[room]
        lo = pages[at[:, None] + np.arange(header.commit_size)]
        lost[room] = lo.copy().view(f"<u{header.commit_size}").ravel().astype(np.int64)

    # all data words of all pages, one row per page, plus a zero word so "the word after"
    # the last one can always be read
    # the pages' words in place (no copy): word k of page p's data is dw[p * wpw + k]; the
    # word after a page's last one is the next page's first (a record cannot use it: it
    # would run past the page and is caught as damage)
    wpw = ps // 4
    dw = words.ravel()[header.data_offset // 4:]
    last = dw.size - 1
    lw = data_len // 4

    # walk all pages at once: iteration k finds the k-th record of every page still going.
    # The step to the next record is computed only where a record starts.
    it_page, it_pos = [], []
    page_idx = np.flatnonzero(lw > 0)
    pos = np.zeros(page_idx.size, np.int64)
    damaged = np.zeros(n_pages, bool)
    while page_idx.size:
        at = page_idx * wpw + pos
        head = dw[at]
        tl = (head & 31).astype(np.int64)
        step = np.where(tl <= 28, tl + 1, 2)
        sized = (tl == 0) | (tl == _TYPE_PADDING)
        if sized.any():
            nxt = dw[np.minimum(at + 1, last)].astype(np.int64)
            null_pad = (tl == _TYPE_PADDING) & ((head >> 5) == 0)
            step = np.where(sized, 1 + (nxt + 3) // 4, step)
            step = np.where(null_pad, _END, step)
            step = np.where((tl == 0) & (nxt < 8), -1, step)   # too short to hold a record
        end = pos + step
        ok = (step > 0) & ((end <= lw[page_idx]) | (step == _END))
        if not ok.all():
            damaged[page_idx[~ok]] = True
        it_page.append(page_idx[ok])
        it_pos.append(pos[ok])
        keep = ok & (end < lw[page_idx])
        page_idx, pos = page_idx[keep], end[keep]
    if damaged.any():
        _report_damaged_pages(np.flatnonzero(damaged), seg, ps, decoded, path)

    # put the records in page order: record k of page p lands at first[p] + k
    counts = np.zeros(n_pages, np.int64)
    for pg in it_page:
        counts[pg] += 1
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    total = int(counts.sum())
    if len(it_page) * n_pages <= 4 * total + 4096:
        # a (record index x page) table written row by row (each row's pages ascend), read
        # back page by page: sequential memory access, where scattering each iteration's
        # records to first[p] + k would touch a cache line per record
        table = np.full((len(it_page), n_pages), -1, np.int32)
        for k, (pg, ps_) in enumerate(zip(it_page, it_pos)):
            table[k, pg] = ps_
        del it_page, it_pos
        by_page = table.T
        rec_pos = by_page[np.arange(by_page.shape[1]) < counts[:, None]]
        del table, by_page
        rec_page = np.repeat(np.arange(n_pages, dtype=np.int32), counts)
    else:
        # pages of very different record counts: the table would be mostly empty
        rec_page = np.empty(total, np.int32)
        rec_pos = np.empty(total, np.int32)
        for k, (pg, ps_) in enumerate(zip(it_page, it_pos)):
            at = first[pg] + k
            rec_page[at] = pg
            rec_pos[at] = ps_
        del it_page, it_pos
    flat = rec_page.astype(np.int64) * wpw + rec_pos
    head = dw[flat]
    r_next = dw[np.minimum(flat + 1, last)]
    del flat
    r_tl = (head & 31).astype(np.int8)
    d = (head >> 5).astype(np.int64)            # the time deltas, completed below
    del head

    # timestamps: cumulative deltas, restarted at each page start and absolute-time record
    is_abs = r_tl == _TYPE_TIME_STAMP
    page_start = np.zeros(total, bool)
    page_start[first[counts > 0]] = True
    resets = page_start | is_abs
    del page_start
    reset_at = np.flatnonzero(resets)
    base_vals = np.where(is_abs[reset_at],
                         (r_next[reset_at].astype(np.int64) << 27) + d[reset_at],
                         page_ts[rec_page[reset_at]].astype(np.int64))
    extend = r_tl == _TYPE_TIME_EXTEND
    d[extend] += r_next[extend].astype(np.int64) << 27
    del extend
    d[is_abs | ((r_tl == _TYPE_PADDING) & (d == 0))] = 0
    del is_abs
    group = np.cumsum(resets, dtype=np.int64) - 1
    del resets
    cs = np.cumsum(d)
    base = base_vals - (cs[reset_at] - d[reset_at])
    del d, base_vals
    ts = base[group]
    ts += cs
    del cs, group

    is_data = r_tl <= 28
    length = np.where(r_tl == 0, r_next.astype(np.int64) - 4, r_tl.astype(np.int64) * 4)
    # the common header (type, flags, preempt_count, pid) needs 8 bytes
    short = is_data & (length < 8)
    if short.any():
        decoded.damaged_records += int(short.sum())
        is_data &= ~short
    d_start = (seg.start + header.data_offset) + rec_page[is_data].astype(np.int64) * ps + \
        rec_pos[is_data].astype(np.int64) * 4 + np.where(r_tl[is_data] == 0, 8, 4)
    # common_type, the low half of the first data word: the word after the header, except
    # for type_len 0 records (their length word comes first)
    first_word = r_next[is_data]
    del r_next
    long_records = np.flatnonzero(r_tl[is_data] == 0)
    if long_records.size:
        first_word[long_records] = _Reads(buf).ints(d_start[long_records], 4)
    kind = (first_word & 0xFFFF).astype(np.int32)
    del first_word, long_records
    data_pages = rec_page[is_data]
    del rec_page, rec_pos
    recs = _Records(ts=ts[is_data], kind=kind, start=d_start,
                    length=length[is_data].astype(np.int32),
                    lost=np.zeros(int(is_data.sum()), np.int32))
    del ts, length

    lost_pages = np.flatnonzero(lost != 0)
    if lost_pages.size:
        # a marker before the page's first record, at the page's time
        decoded.lost_events += int(lost[lost_pages][lost[lost_pages] > 0].sum())
        decoded.lost_unknown += int((lost[lost_pages] < 0).sum())
        marker = _Records(ts=page_ts[lost_pages].astype(np.int64),
                          kind=np.full(lost_pages.size, -1, np.int64),
                          start=seg.start + lost_pages * ps, length=np.zeros(lost_pages.size, np.int64),
                          lost=lost[lost_pages])
        # order: markers sort before the records of their page
        order_key = np.concatenate([lost_pages * 2, data_pages.astype(np.int64) * 2 + 1])
        order = np.argsort(order_key, kind="stable")
        recs = _Records(*(np.concatenate([getattr(marker, f), getattr(recs, f)])[order]
                          for f in ("ts", "kind", "start", "length", "lost")))
    return recs


def _report_bad_headers(bad: np.ndarray, commit, seg: CpuSegment, ps: int, decoded: Decoded,
                        path: str) -> None:
    """Errors for the pages (indices `bad`) whose commit word is larger than a page;
    `commit` gives a page's commit value by its index."""
    for p in bad[:5]:
        decoded.errors.append(InputError(
            f"cpu{seg.cpu}: corrupt page header (commit {int(commit[p]):#x}),"
            f" page skipped", path=seg.label or path, offset=seg.file_offset + int(p) * ps))
    if bad.size > 5:
        decoded.errors.append(InputError(
            f"cpu{seg.cpu}: {int(bad.size) - 5} more corrupt page headers", path=seg.label or path,
            offset=seg.file_offset))
    decoded.damaged_pages += int(bad.size)


def _report_damaged_pages(damaged: np.ndarray, seg: CpuSegment, ps: int, decoded: Decoded,
                          path: str) -> None:
    for p in damaged[:5]:
        decoded.errors.append(InputError(
            f"cpu{seg.cpu}: corrupt record in page, rest of the page skipped",
            path=seg.label or path, offset=seg.file_offset + int(p) * ps))
    decoded.damaged_pages += int(damaged.size)


class _PageCommit:
    """A page's commit word (low 32 bits) by page index, read for the few error messages."""

    def __init__(self, buf: np.ndarray, seg: CpuSegment, header: PageHeader):
        self.buf, self.seg, self.header = buf, seg, header

    def __getitem__(self, p) -> int:
        h = self.header
        size = h.commit_size
        at = self.seg.start + int(p) * h.page_size + (h.commit_offset // size) * size
        return int.from_bytes(self.buf[at:at + size].tobytes(), "little") & 0xFFFFFFFF


def _records_of_c_walk(got: dict, buf: np.ndarray, seg: CpuSegment, header: PageHeader,
                       decoded: Decoded, path: str) -> _Records:
    """The C walk's output as the numpy walk gives it, its damage reported the same way."""
    ps = header.page_size
    bad = np.frombuffer(got["bad_pages"], np.int64)
    if bad.size:
        _report_bad_headers(bad, _PageCommit(buf, seg, header), seg, ps, decoded, path)
    damaged = np.frombuffer(got["damaged_pages"], np.int64)
    if damaged.size:
        _report_damaged_pages(damaged, seg, ps, decoded, path)
    decoded.damaged_records += got["short_records"]
    decoded.lost_events += got["lost_events"]
    decoded.lost_unknown += got["lost_unknown"]
    return _Records(ts=np.frombuffer(got["ts"], np.int64),
                    kind=np.frombuffer(got["kind"], np.int32),
                    start=np.frombuffer(got["start"], np.int64),
                    length=np.frombuffer(got["length"], np.int32),
                    lost=np.frombuffer(got["lost"], np.int64))


# -- gathering fields -----------------------------------------------------------------------------

class _Reads:
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


def _gather_uint(buf: np.ndarray, at: np.ndarray, size: int) -> np.ndarray:
    """Little-endian unsigned integers of `size` bytes at buffer indices `at` (as uint64)."""
    return _Reads(buf).ints(at, size).astype(np.uint64)



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
class _Piece:
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


def _field_columns(reads: _Reads, fmt: EventFormat, start: np.ndarray, length: np.ndarray,
                   long_size: int, raw_text: bool = True
                   ) -> tuple[list[_Piece], pl.Series | None]:
    """The typed columns of one event type's records and their `raw` text.

    Every fixed field is one gather from the buffer at (record start + field offset)."""
    pieces: list[_Piece] = []
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
                pieces.append(_Piece(name, series, pl.String))
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
                pieces.append(_Piece(name, series, series.dtype))
                raw_parts.append((f"{f.name}=[{{}}]", key, series))
            continue
        if f.array_len and f.is_string:
            series = _cut_strings(reads.bytes_block(start + f.offset, f.size))
            pieces.append(_Piece(name, series, pl.String))
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
            pieces.append(_Piece(name, mat, pl.List(inner)))
            for j in range(count):
                raw_parts.append(((f"{f.name}=[" if j == 0 else "") + "{}" +
                                  ("]" if j == count - 1 else ""), f"{key}_{j}", mat[:, j]))
            continue
        size = f.size if f.size in (1, 2, 4, 8) else 8
        values = reads.ints(start + f.offset, size, f.signed)
        dtype = _column_dtype(f)
        if name == "prev_state" and dtype == pl.String:
            series = _task_state(values.astype(np.int64), fmt.print_fmt)
            pieces.append(_Piece(name, series, pl.String))
            raw_parts.append((label, key, series))
            continue
        if dtype == pl.String:
            dtype = pl.Int64 if f.signed else pl.UInt64
        pieces.append(_Piece(name, values, dtype))
        hex_text = not f.signed and size == long_size and fmt.name not in _DECIMAL_RAW
        raw_parts.append((label, key, (values, hex_text)))
    if raw_parts and (raw_text or not _all_typed(fmt)):
        raw = _render_raw(raw_parts, n)
    elif raw_parts:
        raw = None      # no text: the event's fields are all columns
    else:
        raw = pl.repeat("", n, dtype=pl.String, eager=True)
    return pieces, raw


def _render_raw(raw_parts: list[tuple[str, str, object]], n: int) -> pl.Series:
    """The `name=value ...` text of one event type's records (unsigned longs in hex)."""
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

def _flag_table() -> pl.Series:
    """The 5-character latency flags for every (common_preempt_count << 8 | common_flags),
    as the kernel prints them (trace_print_lat_fmt)."""
    heads, tails = _flag_parts()
    return pl.Series([h + t for t in tails for h in heads], dtype=pl.String)


def _flag_views() -> tuple:
    """:func:`_flag_table` as an arrow_columns.view_table, built by numpy (65536 entries)."""
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


def _flags_column(lat_key: np.ndarray) -> pl.Series:
    """The flags text of each (preempt_count << 8 | flags) key: one gather from a table."""
    global _FLAGS
    if _FLAGS is None:
        _FLAGS = _flag_table()
    return _FLAGS.gather(lat_key)


def _in_threads(fn, items: list) -> list:
    """``[fn(x) for x in items]``, the calls spread over the machine's CPUs (for work that
    spends its time in numpy or polars, which release the GIL)."""
    workers = min(len(items), os.cpu_count() or 1, 4)
    if workers <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def _return_freed_memory() -> None:
    """Hand memory numpy freed back to the system.

    glibc raises its mmap threshold each time a big block is freed, so the decoder's later
    temporaries (7-14 MB each) come from the heap, and freed ones stay resident there, which
    would count against the decoder's peak memory; malloc_trim releases their pages."""
    try:
        _LIBC.malloc_trim(0)
    except (AttributeError, OSError):
        pass


try:
    _LIBC = ctypes.CDLL(None)
except OSError:     # no C library to ask (not glibc): nothing to trim
    _LIBC = None


# -- the whole decode -----------------------------------------------------------------------------

def decode(buf: np.ndarray, segments: list[CpuSegment], formats: dict[int, EventFormat],
           header: PageHeader, *, path: str, long_size: int = 8,
           cmdlines: dict[int, str] | None = None,
           tgids: dict[int, int] | None = None, raw_text: str = "untyped",
           release=None) -> Decoded:
    """Decode the pages of `segments` (per CPU) in `buf` into one time-ordered event frame.

    Columns: ts_ns, cpu, pid, comm, tgid, flags, system, event, offset, raw, lost and every
    field of every event type under its own name. Damage is reported in ``errors`` and counted.
    ``raw_text="untyped"`` (the default) renders the ``raw`` text only for events with a field
    the schema has no column for (the others' text is rendered on demand from their columns by
    :mod:`kmltrace.formats.raw_text`; a third of the decode time on a syscall-heavy capture);
    "all" renders it for every event. `release` is called once the pages have been read
    (trace.dat drops its mapping's resident pages there).
    """
    if buf.dtype != np.uint8:
        raise TypeError("buf must be uint8")
    # handed on in a box, so that once the pages are read the decode holds the last
    # reference and can drop it (a caller that passes `box.pop()` keeps none either)
    box = [buf]
    del buf
    return _decode(box, segments, formats, header, path=path, long_size=long_size,
                   cmdlines=cmdlines, tgids=tgids, raw_text=raw_text != "untyped",
                   release=release, rs=use_accelerator("_ringscan"))


def _merge_numpy(parts: list, buf: np.ndarray) -> dict[str, np.ndarray]:
    """The CPUs' records in time order, with the common header's pid and flags key."""
    ts = _merged(parts, "ts", np.int64)
    # CPU-major, page order within a CPU: a stable sort by time merges the CPUs like trace-cmd
    order = np.argsort(ts, kind="stable")
    out = {"ts": ts[order]}
    del ts
    for name, dtype in (("kind", np.int32), ("start", np.int64), ("length", np.int32),
                        ("lost", np.int64)):
        out[name] = _merged(parts, name, dtype)[order]
    out["cpu"] = np.concatenate([np.full(r.ts.size, s.cpu, np.int32) for s, r in parts])[order] \
        if parts else np.zeros(0, np.int32)
    shift = np.concatenate([np.full(r.ts.size, s.file_offset - s.start, np.int64)
                            for s, r in parts]) if parts else np.zeros(0, np.int64)
    out["offset"] = out["start"] + shift[order]
    del shift, order
    start, is_event = out["start"], out["kind"] >= 0
    reads = _Reads(buf)
    all_events = bool(is_event.all())
    # the common header: u16 type, u8 flags, u8 preempt_count, s32 pid
    at = start if all_events else np.where(is_event, start, 0)
    # (preempt_count << 8 | flags): the index of the irq-info flags text
    out["lat_key"] = (reads.ints(at, 4) >> 16).astype(np.uint16)
    out["pid"] = reads.ints(at + 4, 4, signed=True)
    if not all_events:
        out["lat_key"][~is_event] = 0
    return out


def _merge_c(rs, parts: list, buf: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`_merge_numpy` by the C accelerator: a k-way merge when every CPU's records are
    in time order (then it equals the stable sort), else along numpy's stable order."""
    items = [(np.ascontiguousarray(r.ts, np.int64), np.ascontiguousarray(r.kind, np.int32),
              np.ascontiguousarray(r.start, np.int64), np.ascontiguousarray(r.length, np.int32),
              np.ascontiguousarray(r.lost, np.int64), s.cpu, s.file_offset - s.start)
             for s, r in parts]
    got = rs.merge(items, buf, None)
    if got is None:
        order = np.argsort(_merged(parts, "ts", np.int64), kind="stable")
        got = rs.merge(items, buf, order)
    dtypes = {"ts": np.int64, "kind": np.int32, "start": np.int64, "length": np.int32,
              "lost": np.int64, "cpu": np.int32, "offset": np.int64, "pid": np.int32,
              "lat_key": np.uint16}
    return {k: np.frombuffer(got[k], dtypes[k]) for k in dtypes}


def _merged(parts: list, field: str, dtype) -> np.ndarray:
    """One field of every CPU's records, CPU after CPU."""
    if not parts:
        return np.zeros(0, dtype)
    return np.concatenate([getattr(r, field) for _, r in parts]).astype(dtype, copy=False)


def _decode(box, segments, formats, header, *, path, long_size, cmdlines, tgids,
            raw_text, release, rs) -> Decoded:
    buf = box.pop()
    decoded = Decoded(events=pl.DataFrame())
    inside = []
    for seg in segments:
        if seg.start < 0 or seg.start + seg.length > buf.size:
            decoded.errors.append(InputError(
                f"cpu{seg.cpu}: data runs past the end of the file", path=seg.label or path,
                offset=seg.file_offset))
            seg = CpuSegment(seg.cpu, seg.start, max(0, min(seg.length, buf.size - seg.start)),
                             seg.file_offset, seg.label)
        inside.append(seg)

    def walk(seg, buf=buf):
        # each CPU counts its own damage (threads), merged below in CPU order
        own = Decoded(events=None)
        return own, _walk_cpu(buf, seg, header, own, path, rs)

    parts = []
    for seg, (own, recs) in zip(inside, _in_threads(walk, inside)):
        parts.append((seg, recs))
        decoded.errors += own.errors
        for counter in ("lost_events", "lost_unknown", "pages", "damaged_pages",
                        "damaged_records"):
            setattr(decoded, counter, getattr(decoded, counter) + getattr(own, counter))
    del inside, walk

    merged = _merge_c(rs, parts, buf) if rs is not None else None
    if merged is None:
        merged = _merge_numpy(parts, buf)
    del parts
    ts, kind, start, length, lost, cpu, offset, pid, lat_key = (
        merged[k] for k in ("ts", "kind", "start", "length", "lost", "cpu", "offset", "pid",
                            "lat_key"))
    del merged
    _return_freed_memory()
    n = ts.size
    is_event = kind >= 0
    reads = _Reads(buf, rs)
    all_events = bool(is_event.all())

    known_ids = np.array(sorted(formats), np.int64)
    # names of the types present only: the formats are parsed when first used
    type_names: list[str | None] = [None] * (known_ids.size + 1)
    systems: list[str | None] = [None] * (known_ids.size + 1)
    # common_type -> 1 + index in known_ids (0: no format), by one lookup per record
    lookup = np.zeros(1 << 16, np.int32)
    ids = known_ids[(known_ids >= 0) & (known_ids < 1 << 16)]
    lookup[ids] = np.searchsorted(known_ids, ids) + 1
    type_index = lookup[np.where(is_event, kind, 0) if not all_events else kind]
    if not all_events:
        type_index[~is_event] = 0
    known = type_index > 0
    del lookup, ids

    # each column is assembled once at full length, in time order, from the types' pieces
    columns: dict[str, list] = {}
    numeric = _NumericColumns(n)
    raws: list[tuple[np.ndarray, pl.Series]] = []
    # the rows of each event type present, from one stable sort by type
    if rs is not None:
        by_type, type_counts = (np.frombuffer(a, np.int64) for a in rs.type_order(
            np.ascontiguousarray(type_index, np.int32), known_ids.size + 1))
    else:
        by_type = np.argsort(type_index, kind="stable")
        type_counts = np.bincount(type_index, minlength=known_ids.size + 1)
    bounds = np.concatenate([[0], np.cumsum(type_counts)])
    present = []
    for i in np.flatnonzero(type_counts[1:]):
        rows = by_type[bounds[i + 1]:bounds[i + 2]]
        tid = known_ids[i]
        try:
            fmt = formats[int(tid)]
        except KmltraceError as e:
            # a format that does not parse: its records stay as unknown rows
            decoded.errors.append(e)
            known[rows] = False
            type_index[rows] = 0
            continue
        type_names[i + 1], systems[i + 1] = fmt.name, fmt.system or None
        # a record shorter than its format's fixed fields is damaged: its fields read what
        # follows it (reads stay inside the buffer); the damage is counted
        short = length[rows] < fmt.fixed_size
        if short.any():
            decoded.damaged_records += int(short.sum())
        present.append((rows, fmt))

    def fields_of(item, reads=reads, start=start, length=length):
        rows, fmt = item
        return _field_columns(reads, fmt, start[rows], length[rows], long_size, raw_text)

    # the event types' fields are read in threads (numpy's gathers release the GIL), the
    # biggest types first so that they do not end up last on one thread; they are then
    # put in type order, as the columns' dtypes come from the first type that has them
    biggest = sorted(range(len(present)), key=lambda k: -present[k][0].size)
    results = dict(zip(biggest, _in_threads(fields_of, [present[k] for k in biggest])))
    del fields_of
    for k, (rows, fmt) in enumerate(present):
        pieces, raw = results.pop(k)
        for piece in pieces:
            if not numeric.put(piece, rows):
                columns.setdefault(piece.name, []).append((rows, piece))
        del pieces
        if raw is not None:
            raws.append((rows, raw))
    unknown = np.flatnonzero(is_event & ~known)
    if unknown.size:
        raw = pl.DataFrame({"t": kind[unknown], "l": length[unknown]}).select(
            pl.concat_str(pl.lit("type="), pl.col("t").cast(pl.String), pl.lit(" len="),
                          pl.col("l").cast(pl.String))).to_series()
        raws.append((unknown, raw))
    lost_rows = np.flatnonzero(~is_event)
    if lost_rows.size:
        counts = lost[lost_rows]
        columns["lost"] = [(lost_rows, _Piece("lost", np.where(counts >= 0, counts, -1),
                                              pl.Int64))]
        raw = pl.DataFrame({"c": counts}).select(pl.concat_str(
            pl.lit("LOST "), pl.when(pl.col("c") >= 0).then(pl.col("c").cast(pl.String))
            .otherwise(pl.lit("?")), pl.lit(" EVENTS"))).to_series()
        raws.append((lost_rows, raw))
    # the pages are no longer read: let the caller drop them, and the per-record arrays go
    del start, length, by_type, lost
    # the pages are read: the buffer goes (a decompressed one is freed here)
    del buf, reads
    if release is not None:
        release()
    _return_freed_memory()
    fields = numeric.finish()
    for name in list(columns):
        fields[name] = _assemble(name, columns.pop(name), n, rs)
    if "lost" in fields:
        fields["lost"] = pl.select(pl.when(fields["lost"] >= 0).then(fields["lost"])).to_series()
    raw_parts = [(rows, _Piece("raw", r, pl.String)) for rows, r in raws]
    del raws
    fields["raw"] = _assemble("raw", raw_parts, n) if raw_parts else \
        pl.repeat(None, n, dtype=pl.String, eager=True)
    del raw_parts
    _return_freed_memory()

    if rs is not None:
        try:
            decoded.events = _frame_accelerated(
                rs, ts=ts, cpu=cpu, pid=pid, offset=offset, lat_key=lat_key,
                type_index=type_index, is_event=is_event, known=known, type_names=type_names,
                systems=systems, cmdlines=cmdlines, tgids=tgids, fields=fields)
            _return_freed_memory()
            return decoded
        except UnicodeEncodeError:     # a name polars would not take either way: the pure path
            pass
    names = pl.Series(type_names, dtype=pl.String)
    sys_names = pl.Series(systems, dtype=pl.String)
    event_names = names.gather(type_index)
    event_names = event_names.scatter(np.flatnonzero(~is_event), LOST_EVENTS) \
        if (~is_event).any() else event_names
    unknown_name = np.flatnonzero(is_event & ~known)
    if unknown_name.size:
        event_names = event_names.scatter(unknown_name, None)
    pid_s = pl.Series("pid", pid)
    core = pl.DataFrame({
        "ts_ns": ts,
        "seq": np.arange(n, dtype=np.int64),
        "cpu": cpu,
        "pid": pid_s,
        "source": pl.repeat("ftrace", n, eager=True, dtype=pl.String),
        "system": sys_names.gather(type_index),
        "event": event_names,
        "offset": offset,
        "flags": _flags_column(lat_key),
    })
    del lat_key, pid, offset, ts, cpu
    if (~is_event).any():
        nulls = pl.Series(~is_event)
        core = core.with_columns(
            pl.when(nulls.not_()).then(pl.col(c)).alias(c) for c in ("pid", "flags"))
    core = core.with_columns(_comm_expr(cmdlines), _tgid_expr(tgids))
    decoded.events = core.hstack([fields[name].alias(name) for name in fields])
    _return_freed_memory()
    return decoded


def _frame_accelerated(rs, *, ts, cpu, pid, offset, lat_key, type_index, is_event, known,
                       type_names, systems, cmdlines, tgids, fields) -> pl.DataFrame:
    """The frame the end of :func:`_decode` builds, its string columns made in memory polars
    takes over (formats/arrow_columns.py) instead of by polars gathers."""
    n = ts.size
    events_only = None if is_event.all() else is_event
    # lost-events rows: the event name after the type names; their type index is 0
    event_index = type_index.astype(np.int32, copy=True)
    if events_only is not None:
        event_index[~is_event] = len(type_names)
    names = list(type_names) + [LOST_EVENTS]
    names[0] = None     # no format: unknown event types and lost rows have no name
    global _FLAG_VIEWS
    if _FLAG_VIEWS is None:
        _FLAG_VIEWS = _flag_views()
    pid_s = pl.Series("pid", pid) if events_only is None else \
        pl.Series("pid", np.ma.MaskedArray(pid, mask=~is_event))
    comms = {0: "<idle>", **(cmdlines or {})}
    keys = np.array(sorted(comms), np.int64)
    if keys[0] >= 0 and keys[-1] < 1 << 23:
        # pids are small: one lookup table (the last slot: no comm)
        lookup = np.full(int(keys[-1]) + 2, keys.size, np.int32)
        lookup[keys] = np.arange(keys.size, dtype=np.int32)
        comm_index = lookup[np.clip(pid, -1, keys[-1] + 1)]
    else:
        slot = np.searchsorted(keys, pid).clip(0, keys.size - 1)
        comm_index = np.where(keys[slot] == pid, slot, keys.size).astype(np.int32)
    core = pl.DataFrame([
        pl.Series("ts_ns", ts),
        pl.Series("seq", np.arange(n, dtype=np.int64)),
        pl.Series("cpu", cpu),
        pid_s,
        arrow_columns.constant_string(rs, "source", "ftrace", n),
        arrow_columns.string_column(rs, "system", arrow_columns.view_table(systems),
                                    type_index),
        arrow_columns.string_column(rs, "event", arrow_columns.view_table(names), event_index),
        pl.Series("offset", offset),
        arrow_columns.string_column(rs, "flags", _FLAG_VIEWS, lat_key, events_only),
        arrow_columns.string_column(rs, "comm", arrow_columns.view_table(
            [comms[int(k)] for k in keys] + [None]), comm_index, events_only),
    ])
    core = core.with_columns(_tgid_expr(tgids))
    return core.hstack([fields[name].alias(name) for name in fields])


_FLAG_VIEWS = None

_NUMPY_OF = {pl.Int8: np.int8, pl.Int16: np.int16, pl.Int32: np.int32, pl.Int64: np.int64,
             pl.UInt8: np.uint8, pl.UInt16: np.uint16, pl.UInt32: np.uint32,
             pl.UInt64: np.uint64, pl.Boolean: np.bool_}


class _NumericColumns:
    """Numeric columns collected type by type, made full-length once every type is read."""

    def __init__(self, n: int):
        self.n = n
        self.parts: dict[str, tuple[pl.DataType, type, list]] = {}
        self.refused: set[str] = set()

    def put(self, piece: _Piece, rows: np.ndarray) -> bool:
        values = piece.values
        if isinstance(values, pl.Series) or values.ndim != 1 or piece.name in self.refused:
            self.refused.add(piece.name)
            return False
        found = self.parts.get(piece.name)
        if found is None:
            dtype = FIELD_COLUMNS.get(piece.name) or piece.dtype
            np_dtype = _NUMPY_OF.get(dtype)
            if np_dtype is None:
                self.refused.add(piece.name)
                return False
            found = (dtype, np_dtype, [])
            self.parts[piece.name] = found
        # the first type's dtype holds for the column (as a store into its array would)
        found[2].append((rows, values.astype(found[1], copy=False)))
        return True

    def finish(self) -> dict[str, pl.Series]:
        out = {}
        for name in list(self.parts):
            dtype, np_dtype, parts = self.parts.pop(name)
            # numpy memory, which polars takes without a copy: zeroed (calloc) pages that no
            # row writes are never touched, and big arrays sit in huge pages (a 4 KiB page
            # fault per page of a polars-allocated column cost more than filling it)
            values = np.zeros(self.n, np_dtype)
            covered = np.zeros(self.n, bool)
            for rows, v in parts:
                values[rows] = v
                covered[rows] = True
            del parts
            # a masked array becomes a column with nulls without another pass
            out[name] = pl.Series(name, np.ma.MaskedArray(values, mask=~covered)) \
                if not covered.all() else pl.Series(name, values)
            if out[name].dtype != dtype:
                out[name] = out[name].cast(dtype)
        return out


def _is_sparse(covered: int, n: int) -> bool:
    """Few enough rows that a null column with the values scattered in is the cheaper form."""
    return covered * 16 < n


def _sparse_column(name: str, rows: np.ndarray, values, dtype: pl.DataType,
                   n: int) -> pl.Series:
    """A full-length column of nulls with `values` at `rows`.

    The null column's buffers are zeroed memory the scatter writes into only where a value
    lands, so a column of a rare event's field costs its values, not a page per row: a
    gather would write (and make resident) every row's slot."""
    column = pl.repeat(None, n, dtype=dtype, eager=True).alias(name)
    if not rows.size:
        return column
    values = values if isinstance(values, pl.Series) else pl.Series(values)
    if values.dtype != dtype:
        values = values.cast(dtype, strict=False)
    return column.scatter(rows, values)


def _assemble(name: str, parts: list, n: int, rs=None) -> pl.Series:
    """One full-length column from (rows, piece) parts; rows no part covers are null."""
    if rs is not None and len(parts) == 1:
        # one event type's fixed array (sys_enter's args): a list column over its rows,
        # in memory polars takes over
        rows, piece = parts[0]
        dtype = FIELD_COLUMNS.get(name) or piece.dtype
        values = piece.values
        if isinstance(values, np.ndarray) and values.ndim == 2 and \
                isinstance(dtype, pl.List) and _NUMPY_OF.get(dtype.inner) == values.dtype and \
                (rows.size < 2 or bool((np.diff(rows) > 0).all())):
            column = arrow_columns.list_column(rs, name, rows, values, n)
            if column is not None:
                return column
    total = sum(rows.size for rows, _ in parts)
    kinds = {"series" if isinstance(p.values, pl.Series) else "array" for _, p in parts}
    covered = None
    if kinds == {"array"}:
        first = parts[0][1]
        dtype = FIELD_COLUMNS.get(name) or first.dtype
        if any(p.dtype != first.dtype for _, p in parts) and name not in FIELD_COLUMNS:
            dtype = pl.Int64
        if isinstance(dtype, pl.List) or any(p.values.ndim == 2 for _, p in parts):
            kinds = {"series"}
        if kinds == {"array"}:
            values = np.zeros(n, np.result_type(*(p.values for _, p in parts)))
            covered = np.zeros(n, bool)
            for rows, p in parts:
                values[rows] = p.values
                covered[rows] = True
            if dtype == pl.Boolean:
                values = values != 0
            # a masked array becomes a column with nulls without another pass
            series = pl.Series(name, np.ma.MaskedArray(values, mask=~covered))
            return series.cast(dtype, strict=False) if series.dtype != dtype else series
    # strings and lists: concatenate the parts, then one gather (or, for few rows, one
    # scatter into a null column) puts them in order
    pieces = []
    for _, p in parts:
        values = p.values
        if not isinstance(values, pl.Series):
            if values.ndim == 2:
                dtype = FIELD_COLUMNS.get(name) or p.dtype
                inner = dtype.inner if isinstance(dtype, pl.List) else dtype
                values = pl.Series(values).cast(pl.List(inner))
            else:
                values = pl.Series(values)
        pieces.append(values)
    dtypes = {v.dtype for v in pieces}
    if len(dtypes) > 1:
        pieces = [v.cast(pl.String) if not isinstance(v.dtype, pl.List)
                  else v.cast(pl.List(pl.String)).list.join(",") for v in pieces]
    joined = pl.concat(pieces, rechunk=False)   # no copy: the gather reads the chunks
    del pieces
    if _is_sparse(total, n) and not isinstance(joined.dtype, pl.List):
        rows = np.concatenate([rows for rows, _ in parts])
        return _sparse_column(name, rows, joined.rechunk(), joined.dtype, n)
    index = np.full(n, -1, np.int64)
    at = 0
    for rows, p in parts:
        index[rows] = np.arange(at, at + rows.size)
        at += rows.size
    idx = pl.Series(index)
    del index
    if total < n:
        idx = pl.select(pl.when(idx >= 0).then(idx)).to_series()
    return joined.gather(idx).alias(name)


def _null_where(series: pl.Series, covered: np.ndarray) -> pl.Series:
    """`series` with nulls where `covered` is False."""
    if covered.all():
        return series
    return series.set(pl.Series(~covered), None)


def _comm_expr(cmdlines: dict[int, str] | None) -> pl.Expr:
    table = {0: "<idle>", **(cmdlines or {})}
    return pl.col("pid").replace_strict(list(table), list(table.values()), default=None,
                                        return_dtype=pl.String).alias("comm")


def _tgid_expr(tgids: dict[int, int] | None) -> pl.Expr:
    if not tgids:
        return pl.lit(None, dtype=pl.Int32).alias("tgid")
    return pl.col("pid").replace_strict(list(tgids), list(tgids.values()), default=None,
                                        return_dtype=pl.Int32).alias("tgid")

