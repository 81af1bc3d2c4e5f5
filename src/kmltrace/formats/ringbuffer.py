"""Decode ftrace ring-buffer pages (trace_pipe_raw, trace.dat CPU data) into the event table.

No per-event Python. :mod:`ringbuffer_pages` walks each CPU's pages into records and merges
the CPUs in time order; :mod:`ringbuffer_fields` reads each event type's fields (one gather
per fixed field, event types in threads) and renders their raw text; this module puts the
pieces together: numeric columns filled in place at full length, string/list columns and the
raw text put in time order with one gather each. With the C accelerator
(formats/_ringscan.c, chosen by kmltrace.accel: KMLTRACE_PURE=1 switches it off) the walk,
merge and gathers run in C and the string/list columns are built in memory polars takes over
(formats/arrow_columns.py); the numpy/polars path is the reference they are tested against.
"""

from __future__ import annotations

import ctypes
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import polars as pl

from kmltrace.accel import use_accelerator
from kmltrace.errors import InputError, KmltraceError
from kmltrace.formats import arrow_columns
from kmltrace.formats.event_format import EventFormat, PageHeader
from kmltrace.formats.ringbuffer_fields import (Piece, Reads, field_columns, flag_views,
                                                flags_column, hex_strings)
from kmltrace.formats.ringbuffer_pages import (RB_MISSED_EVENTS, RB_MISSED_STORED, CpuSegment,
                                               Decoded, merge_c, merge_numpy, walk_cpu)
from kmltrace.memory import fresh_pages
from kmltrace.schema import FIELD_COLUMNS, LOST_EVENTS

__all__ = ["RB_MISSED_EVENTS", "RB_MISSED_STORED", "CpuSegment", "Decoded", "decode",
           "hex_strings"]


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
    rs = use_accelerator("_ringscan")
    with fresh_pages(rs):
        return _decode(box, segments, formats, header, path=path, long_size=long_size,
                       cmdlines=cmdlines, tgids=tgids, raw_text=raw_text != "untyped",
                       release=release, rs=rs)


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
        return own, walk_cpu(buf, seg, header, own, path, rs)

    parts = []
    for seg, (own, recs) in zip(inside, _in_threads(walk, inside)):
        parts.append((seg, recs))
        decoded.errors += own.errors
        for counter in ("lost_events", "lost_unknown", "pages", "damaged_pages",
                        "damaged_records"):
            setattr(decoded, counter, getattr(decoded, counter) + getattr(own, counter))
    del inside, walk

    merged = merge_c(rs, parts, buf) if rs is not None else None
    if merged is None:
        merged = merge_numpy(parts, buf)
    del parts
    ts, kind, start, length, lost, cpu, offset, pid, lat_key = (
        merged[k] for k in ("ts", "kind", "start", "length", "lost", "cpu", "offset", "pid",
                            "lat_key"))
    del merged
    _return_freed_memory()
    n = ts.size
    is_event = kind >= 0
    reads = Reads(buf, rs)
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
    numeric = _NumericColumns(n, rs)
    raws: list[tuple[np.ndarray, pl.Series | arrow_columns.Text]] = []
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
        return field_columns(reads, fmt, start[rows], length[rows], long_size, raw_text)

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
        columns["lost"] = [(lost_rows, Piece("lost", np.where(counts >= 0, counts, -1),
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
    raw = arrow_columns.assemble_text(rs, "raw", raws, n) if rs is not None and raws else None
    if raw is None:
        raw_parts = [(rows, Piece("raw", r.series() if isinstance(r, arrow_columns.Text) else r,
                                  pl.String)) for rows, r in raws]
        raw = _assemble("raw", raw_parts, n) if raw_parts else \
            pl.repeat(None, n, dtype=pl.String, eager=True)
        del raw_parts
    del raws
    fields["raw"] = raw
    del raw
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
        "system": sys_names.gather(type_index),
        "event": event_names,
        "offset": offset,
        "flags": flags_column(lat_key),
    })
    del lat_key, pid, offset, ts, cpu
    if (~is_event).any():
        nulls = pl.Series(~is_event)
        core = core.with_columns(
            pl.when(nulls.not_()).then(pl.col(c)).alias(c) for c in ("pid", "flags"))
    core = _with_source(core.with_columns(_comm_expr(cmdlines), _tgid_expr(tgids)))
    decoded.events = core.hstack([fields[name].alias(name) for name in fields])
    _return_freed_memory()
    return decoded


def _with_source(core: pl.DataFrame) -> pl.DataFrame:
    """The constant `source` column after `pid`, as a literal: polars keeps one value for it
    and fills a column only if something needs one (28 MB of views for 1.8 M rows)."""
    names = core.columns
    at = names.index("pid") + 1
    return core.with_columns(pl.lit("ftrace", dtype=pl.String).alias("source")).select(
        names[:at] + ["source"] + names[at:])


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
        _FLAG_VIEWS = flag_views()
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
        arrow_columns.string_column(rs, "system", arrow_columns.view_table(systems),
                                    type_index),
        arrow_columns.string_column(rs, "event", arrow_columns.view_table(names), event_index),
        pl.Series("offset", offset),
        arrow_columns.string_column(rs, "flags", _FLAG_VIEWS, lat_key, events_only),
        arrow_columns.string_column(rs, "comm", arrow_columns.view_table(
            [comms[int(k)] for k in keys] + [None]), comm_index, events_only),
    ])
    core = _with_source(core.with_columns(_tgid_expr(tgids)))
    return core.hstack([fields[name].alias(name) for name in fields])


_FLAG_VIEWS = None

_NUMPY_OF = {pl.Int8: np.int8, pl.Int16: np.int16, pl.Int32: np.int32, pl.Int64: np.int64,
             pl.UInt8: np.uint8, pl.UInt16: np.uint16, pl.UInt32: np.uint32,
             pl.UInt64: np.uint64, pl.Boolean: np.bool_}


class _NumericColumns:
    """Numeric columns collected type by type, made full-length once every type is read."""

    def __init__(self, n: int, rs=None):
        self.n, self.rs = n, rs
        self.parts: dict[str, tuple[pl.DataType, type, list]] = {}
        self.refused: set[str] = set()

    def put(self, piece: Piece, rows: np.ndarray) -> bool:
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
            if self.rs is not None and np.dtype(np_dtype).kind in "iu":
                # accelerator memory with a validity bitmap, handed over as is
                out[name] = arrow_columns.numeric_column(self.rs, name, self.n, np_dtype, parts)
            else:
                values = np.zeros(self.n, np_dtype)
                covered = np.zeros(self.n, bool)
                for rows, v in parts:
                    values[rows] = v
                    covered[rows] = True
                # a masked array becomes a column with nulls without another pass
                out[name] = pl.Series(name, np.ma.MaskedArray(values, mask=~covered)) \
                    if not covered.all() else pl.Series(name, values)
            del parts
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
    if rs is not None and parts and all(isinstance(p.values, pl.Series) and
                                        p.values.dtype == pl.String for _, p in parts):
        # strings (a sched_switch's comms...): views put in place in accelerator memory; a
        # polars column of nulls would be read whole, a fault per 4 KiB of untouched views
        column = arrow_columns.assemble_text(rs, name, [(rows, p.values) for rows, p in parts],
                                             n)
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


def _comm_expr(cmdlines: dict[int, str] | None) -> pl.Expr:
    table = {0: "<idle>", **(cmdlines or {})}
    return pl.col("pid").replace_strict(list(table), list(table.values()), default=None,
                                        return_dtype=pl.String).alias("comm")


def _tgid_expr(tgids: dict[int, int] | None) -> pl.Expr:
    if not tgids:
        return pl.lit(None, dtype=pl.Int32).alias("tgid")
    return pl.col("pid").replace_strict(list(tgids), list(tgids.values()), default=None,
                                        return_dtype=pl.Int32).alias("tgid")
