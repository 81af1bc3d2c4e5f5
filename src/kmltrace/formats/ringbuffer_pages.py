"""Ring-buffer pages -> records: the page walk of one CPU and the merge of the CPUs.

A CPU's pages are one 2-D array of 32-bit words (page x word), read in place. All pages are
walked together: iteration k finds the k-th record of every page still going, computing the
step to the next record from the record header's type_len only where a record starts (the
loop runs as often as the fullest page has records, ~150 for 4 KiB pages, never once per
record). Timestamps are a cumulative sum of the deltas, restarted at each page header and
absolute-time record. The CPUs are merged by one stable sort on time. With the C accelerator
(formats/_ringscan.c) the walk is one pass over each page and the merge a k-way merge; this
numpy code stays the reference and the fallback.

Record layout (kernel/trace/ring_buffer.c): header word = type_len:5 | time_delta:27.
type_len 1..28: data of type_len*4 bytes follows; 0: the next word is the length (+4) and
data follows it; 29: padding (time_delta 0: the rest of the page is empty, else length in the
next word); 30: time extend (delta = next word << 27 | time_delta); 31: absolute timestamp.
Page header: u64 timestamp, local_t commit (bytes of data; bit 31 RB_MISSED_EVENTS, bit 30
RB_MISSED_STORED: the missed count is stored as a long right after the data).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from kmltrace.errors import InputError
from kmltrace.formats.event_format import PageHeader
from kmltrace.formats.ringbuffer_fields import Reads

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

def walk_cpu(buf: np.ndarray, seg: CpuSegment, header: PageHeader, decoded: Decoded,
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
        first_word[long_records] = Reads(buf).ints(d_start[long_records], 4)
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


def merge_numpy(parts: list, buf: np.ndarray) -> dict[str, np.ndarray]:
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
    reads = Reads(buf)
    all_events = bool(is_event.all())
    # the common header: u16 type, u8 flags, u8 preempt_count, s32 pid
    at = start if all_events else np.where(is_event, start, 0)
    # (preempt_count << 8 | flags): the index of the irq-info flags text
    out["lat_key"] = (reads.ints(at, 4) >> 16).astype(np.uint16)
    out["pid"] = reads.ints(at + 4, 4, signed=True)
    if not all_events:
        out["lat_key"][~is_event] = 0
    return out


def merge_c(rs, parts: list, buf: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`merge_numpy` by the C accelerator: a k-way merge when every CPU's records are
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
