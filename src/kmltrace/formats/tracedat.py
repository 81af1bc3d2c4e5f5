"""trace-cmd's ``trace.dat`` (file versions 6 and 7), read without trace-cmd.

Layout (trace-cmd.dat.v6(5), trace-cmd.dat.v7(5)): magic ``\\x17\\x08\\x44tracing``, version
string, endianness, long size, page size. Version 6 then stores header_page/header_event,
the ftrace and event formats, kallsyms, printk formats, saved cmdlines, the CPU count, options
and the ``flyrecord`` table of per-CPU data. Version 7 stores a compression name and the offset
of the first options section; every part is a section (optionally compressed, zstd or zlib)
reached through options, and each instance's CPU data lives in a BUFFER section, compressed in
chunks. The CPU data itself is ring-buffer pages, decoded by :mod:`kmltrace.formats.ringbuffer`.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from kmltrace import schema
from kmltrace.errors import InputError, KmltraceError
from kmltrace.formats import Parsed, tracedat_clock
from kmltrace.formats.event_format import (FormatTable, PageHeader, parse_header_event,
                                           parse_header_page)
from kmltrace.formats.ftrace_raw import lost_events, stats_counts
from kmltrace.formats.ringbuffer import CpuSegment, decode
from kmltrace.formats.sniff import TRACEDAT_MAGIC

NAME = "tracedat"
_MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)

# option ids (trace-cmd.dat.v7(5))
OPT_DONE, OPT_DATE, OPT_CPUSTAT, OPT_BUFFER, OPT_TRACECLOCK, OPT_UNAME = 0, 1, 2, 3, 4, 5
OPT_OFFSET, OPT_CPUCOUNT, OPT_VERSION, OPT_TIME_SHIFT, OPT_TSC2NSEC = 7, 8, 9, 12, 14
OPT_HEADER_INFO, OPT_FTRACE_EVENTS, OPT_EVENT_FORMATS = 16, 17, 18
OPT_KALLSYMS, OPT_PRINTK, OPT_CMDLINES = 19, 20, 21
SEC_FL_COMPRESS = 1


def sniff(head: bytes) -> bool:
    return head.startswith(TRACEDAT_MAGIC)


@dataclass
class _Buffer:
    name: str
    clock: str
    cpus: list[tuple[int, int, int]]          # (cpu, offset, size)
    compressed: bool = False


@dataclass
class TraceDat:
    """Everything a trace.dat says besides the events."""

    version: int = 0
    long_size: int = 8
    page_size: int = 4096
    compression: str = "none"
    header_page: PageHeader | None = None
    formats: FormatTable = field(default_factory=FormatTable)
    cmdlines: dict[int, str] = field(default_factory=dict)
    kallsyms: bytes = b""
    printk: bytes = b""
    options: dict[str, object] = field(default_factory=dict)
    buffers: list[_Buffer] = field(default_factory=list)
    errors: list = field(default_factory=list)


class _Reader:
    """Bounds-checked little-endian reads from the mapped file; errors name path and offset."""

    def __init__(self, data, path: str, pos: int = 0, base: int = 0, mapped: bool = True):
        self.data = data
        self.path = path
        self.pos = pos
        # a section's reader: `base` is where its data starts in the file; a compressed
        # section's bytes have no place in the file, so they are placed at the section
        self.base, self.mapped = base, mapped

    def where(self, at: int) -> int:
        """The file offset of position `at` of this reader."""
        return self.base + at if self.mapped else self.base

    def fail(self, what: str, at: int | None = None) -> InputError:
        return InputError(what, path=self.path,
                          offset=self.where(self.pos if at is None else at))

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"truncated: {n} bytes needed, the file ends at {len(self.data)}")
        out = bytes(self.data[self.pos:self.pos + n])
        self.pos += n
        return out

    def u16(self) -> int:
        return struct.unpack("<H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]

    def cstr(self, limit: int = 4096) -> str:
        end = self.data.find(b"\0", self.pos, min(len(self.data), self.pos + limit))
        if end < 0:
            raise self.fail("truncated: unterminated string")
        out = bytes(self.data[self.pos:end]).decode("utf-8", "replace")
        self.pos = end + 1
        return out


def _decompressor(name: str, path: str):
    if name in ("none", ""):
        return None
    if name == "zstd":
        import zstandard

        dctx = zstandard.ZstdDecompressor()

        def zstd_block(blob: bytes, size: int) -> bytes:
            # trace-cmd's frames carry no content size (max_output_size bounds them); one
            # that does is trusted by zstandard over max_output_size: check it first
            if zstandard.frame_content_size(blob) > size:
                raise ValueError(f"the block holds more than the {size} bytes its header says")
            return dctx.decompress(blob, max_output_size=size)
        return zstd_block
    if name == "zlib":
        return _zlib_block
    raise InputError(f"unknown trace.dat compression {name!r}", path=path, offset=0)


def _zlib_block(blob: bytes, size: int) -> bytes:
    """One zlib block of `size` bytes: never more is inflated (a hostile block could expand
    a thousandfold), and a block that holds more, or ends early, is an error."""
    inflate = zlib.decompressobj()
    # max_length 0 would mean no limit: ask for one byte more, and refuse it if it comes
    out = inflate.decompress(blob, size + 1)
    if len(out) > size or inflate.unconsumed_tail:
        raise ValueError(f"the block holds more than the {size} bytes its header says")
    if not inflate.eof:
        raise ValueError("the block ends before its zlib stream does")
    return out


def _read_header_info(r: _Reader, info: TraceDat) -> None:
    if r.take(12) != b"header_page\0":
        raise r.fail("expected 'header_page'", r.pos - 12)
    text = r.take(r.u64()).decode("utf-8", "replace")
    info.header_page = parse_header_page(text, path=r.path)
    if r.take(13) != b"header_event\0":
        raise r.fail("expected 'header_event'", r.pos - 13)
    parse_header_event(r.take(r.u64()).decode("utf-8", "replace"), path=r.path)


def _add_format(info: TraceDat, text: bytes, system: str, path: str, at: int) -> None:
    try:
        info.formats.add(text.decode("utf-8", "replace"), system, path=path, offset=at)
    except KmltraceError as e:
        # one bad format costs only its own events
        info.errors.append(e)


def _read_ftrace_formats(r: _Reader, info: TraceDat) -> None:
    for _ in range(r.u32()):
        at = r.where(r.pos)
        _add_format(info, r.take(r.u64()), "ftrace", r.path, at)


def _read_event_formats(r: _Reader, info: TraceDat) -> None:
    for _ in range(r.u32()):
        system = r.cstr()
        for _ in range(r.u32()):
            at = r.where(r.pos)
            _add_format(info, r.take(r.u64()), system, r.path, at)


def _parse_cmdlines(text: bytes) -> dict[int, str]:
    out = {}
    for line in text.decode("utf-8", "backslashreplace").splitlines():
        pid, _, comm = line.partition(" ")
        if pid.strip().isdigit():
            out[int(pid)] = comm
    return out


def _read_header(r: _Reader, info: TraceDat) -> None:
    if r.take(10) != TRACEDAT_MAGIC:
        raise r.fail("not a trace.dat file (bad magic)", 0)
    version = r.cstr(16)
    if version not in ("6", "7"):
        raise r.fail(f"unsupported trace.dat version {version!r} (6 and 7 are supported)", 10)
    info.version = int(version)
    endian = r.take(1)[0]
    if endian != 0:
        raise r.fail("big-endian trace.dat is not supported", r.pos - 1)
    info.long_size = r.take(1)[0]
    if info.long_size not in (4, 8):
        raise r.fail(f"bad long size {info.long_size}", r.pos - 1)
    info.formats.long_size = info.long_size
    info.page_size = r.u32()
    if info.page_size < 64 or info.page_size % 8 or info.page_size > (1 << 24):
        raise r.fail(f"bad page size {info.page_size}", r.pos - 4)


def _read_options(r: _Reader, info: TraceDat, end: int) -> int:
    """Read options until DONE; return the DONE option's next-section offset (v7) or 0."""
    while r.pos < end:
        at = r.pos
        opt = r.u16()
        if opt == OPT_DONE:
            if info.version >= 7:
                size = r.u32()
                return r.u64() if size >= 8 else 0
            return 0
        size = r.u32()
        data = r.take(size)
        _option(info, opt, data, r, at)
    return 0


def _option(info: TraceDat, opt: int, data: bytes, r: _Reader, at: int) -> None:
    text = data.rstrip(b"\0").decode("utf-8", "backslashreplace")
    o = info.options
    if opt == OPT_TRACECLOCK:
        m = re.search(r"\[([^\]]+)\]", text)
        o["clock"] = m[1] if m else text.strip()
    elif opt == OPT_UNAME:
        o["uname"] = text
    elif opt == OPT_VERSION:
        o["tracecmd_version"] = text
    elif opt == OPT_CPUCOUNT and len(data) >= 4:
        o["cpus"] = struct.unpack_from("<I", data)[0]
    elif opt == OPT_CPUSTAT:
        o.setdefault("cpustat", []).append(text)
    elif opt == OPT_DATE:
        o.setdefault("dates", []).append(text)
    elif opt == OPT_OFFSET:
        o.setdefault("ts_offsets", []).append(text)
    elif opt == OPT_TIME_SHIFT:
        # a later one replaces an earlier one, as in libtracecmd
        o["time_shift"] = (bytes(data), r.where(at))
    elif opt == OPT_TSC2NSEC and len(data) >= 16:
        mult, shift, offset = struct.unpack_from("<IIq", data)
        o["tsc2nsec"] = {"mult": mult, "shift": shift, "offset": offset}
    elif opt == OPT_BUFFER:
        sub = _Reader(data, r.path, base=r.where(at + 6), mapped=r.mapped)
        try:
            offset = sub.u64()
            name = sub.cstr()
            if info.version >= 7:
                clock = sub.cstr()
                sub.u32()                   # page size
                cpus = [(sub.u32(), sub.u64(), sub.u64()) for _ in range(sub.u32())]
                info.buffers.append(_Buffer(name, clock, cpus))
                info.options.setdefault("_buffer_sections", []).append(offset)
            else:
                info.options.setdefault("_v6_buffers", []).append((name, offset))
        except KmltraceError:
            info.errors.append(InputError("truncated BUFFER option", path=r.path, offset=at))
    elif opt in (OPT_HEADER_INFO, OPT_FTRACE_EVENTS, OPT_EVENT_FORMATS, OPT_KALLSYMS,
                 OPT_PRINTK, OPT_CMDLINES) and len(data) >= 8:
        o.setdefault("_sections", {})[opt] = struct.unpack_from("<Q", data)[0]


def _section(r: _Reader, offset: int, decompress) -> tuple[_Reader, int, int]:
    """The content of the v7 section at `offset` as a reader, with the section id and flags."""
    r.pos = offset
    sec_id, flags = r.u16(), r.u16()
    r.u32()                                  # description string id
    size = r.u64()
    start = r.pos
    if flags & SEC_FL_COMPRESS:
        if decompress is None:
            raise r.fail("compressed section in a file without compression", offset)
        csize, usize = r.u32(), r.u32()
        blob = r.take(csize)
        try:
            data = decompress(blob, usize)
        except Exception as e:   # zstd/zlib raise their own types: name the place
            raise InputError(f"cannot decompress section {sec_id}: {e}", path=r.path,
                             offset=offset) from None
        return _Reader(data, r.path, base=r.where(offset), mapped=False), sec_id, flags
    if start + size > len(r.data):
        raise r.fail(f"truncated: section {sec_id} of {size} bytes runs past the end", offset)
    return _Reader(r.data[start:start + size], r.path, base=r.where(start)), sec_id, flags


def _read_v7(r: _Reader, info: TraceDat) -> None:
    info.compression = r.cstr(64)
    r.cstr(64)                               # compression version
    decompress = _decompressor(info.compression, r.path)
    next_options = r.u64()
    seen = set()
    while next_options and next_options not in seen:
        seen.add(next_options)
        sub, _, _ = _section(r, next_options, decompress)
        next_options = _read_options(sub, info, len(sub.data))
    sections = info.options.pop("_sections", {})
    if OPT_HEADER_INFO not in sections:
        raise r.fail("no HEADER_INFO section", 0)
    readers = {
        OPT_HEADER_INFO: _read_header_info,
        OPT_FTRACE_EVENTS: _read_ftrace_formats,
        OPT_EVENT_FORMATS: _read_event_formats,
    }
    for opt, reader in readers.items():
        if opt in sections:
            sub, _, _ = _section(r, sections[opt], decompress)
            reader(sub, info)
    for opt in (OPT_KALLSYMS, OPT_PRINTK, OPT_CMDLINES):
        if opt not in sections:
            continue
        try:
            sub, _, _ = _section(r, sections[opt], decompress)
            size = sub.u64() if opt == OPT_CMDLINES else sub.u32()
            blob = sub.take(min(size, len(sub.data) - sub.pos))
        except KmltraceError as e:
            info.errors.append(e)
            continue
        if opt == OPT_KALLSYMS:
            info.kallsyms = blob
        elif opt == OPT_PRINTK:
            info.printk = blob
        else:
            info.cmdlines = _parse_cmdlines(blob)
    for buffer, offset in zip(info.buffers, info.options.pop("_buffer_sections", [])):
        r.pos = offset
        r.u16()
        flags = r.u16()
        buffer.compressed = bool(flags & SEC_FL_COMPRESS) and decompress is not None


def _read_v6(r: _Reader, info: TraceDat) -> None:
    _read_header_info(r, info)
    _read_ftrace_formats(r, info)
    _read_event_formats(r, info)
    info.kallsyms = r.take(r.u32())
    info.printk = r.take(r.u32())
    info.cmdlines = _parse_cmdlines(r.take(r.u64()))
    cpus = r.u32()
    kind = r.take(10)
    if kind == b"options  \0":
        _read_options(r, info, len(r.data))
        kind = r.take(10)
    if kind == b"latency  \0":
        raise r.fail("latency (text) trace.dat files carry no binary events; use trace-cmd "
                     "report's text", r.pos - 10)
    if kind != b"flyrecord\0":
        raise r.fail(f"expected 'flyrecord', found {kind!r}", r.pos - 10)
    info.buffers.append(_v6_flyrecord(r, "", cpus))
    ncpus = info.options.get("cpus", cpus)
    for name, offset in info.options.pop("_v6_buffers", []):
        r.pos = offset
        try:
            if r.take(10) != b"flyrecord\0":
                raise r.fail("expected 'flyrecord' of buffer " + repr(name), offset)
            info.buffers.append(_v6_flyrecord(r, name, ncpus))
        except KmltraceError as e:
            info.errors.append(e)


def _v6_flyrecord(r: _Reader, name: str, cpus: int) -> _Buffer:
    table = [(cpu, r.u64(), r.u64()) for cpu in range(cpus)]
    clock = ""
    try:
        clock_text = r.take(r.u64()).decode("utf-8", "replace")
        m = re.search(r"\[([^\]]+)\]", clock_text)
        clock = m[1] if m else clock_text.strip("\0\n ")
    except KmltraceError:
        pass
    return _Buffer(name, clock, table)


@dataclass
class _Chunk:
    """One compressed chunk of a CPU's pages: where it is and where its pages go."""

    segment: int        # index in the segment list
    at: int             # file offset of the chunk header (named in errors)
    blob: object        # the compressed bytes (a view of the mapped file)
    size: int           # decompressed size
    dest: int           # index in the decode buffer


def _cpu_data(r: _Reader, info: TraceDat, buffer: _Buffer, chunks: list[_Chunk],
              segments: list, pos: int) -> int:
    """Add each CPU's segment (and, compressed, its chunks); return the new buffer length."""
    view = memoryview(r.data) if isinstance(r.data, mmap.mmap) else r.data
    for cpu, offset, size in buffer.cpus:
        if size == 0:
            continue
        label = r.path
        if not buffer.compressed:
            # uncompressed pages are decoded in place, from the mapped file
            end = min(offset + size, len(r.data))
            if end < offset + size:
                info.errors.append(InputError(
                    f"truncated: cpu{cpu} data of {size} bytes runs past the end of the file",
                    path=r.path, offset=len(r.data)))
            segments.append(CpuSegment(cpu, offset, max(0, end - offset), offset, label))
            continue
        r.pos = offset
        seg_start = pos
        try:
            for _ in range(r.u32()):
                at = r.pos
                csize, usize = r.u32(), r.u32()
                if r.pos + csize > len(r.data):
                    raise r.fail(f"truncated: {csize} bytes needed, the file ends at "
                                 f"{len(r.data)}")
                chunks.append(_Chunk(len(segments), at, view[r.pos:r.pos + csize], usize, pos))
                r.pos += csize
                pos += usize
        except KmltraceError as e:
            info.errors.append(e)
        segments.append(CpuSegment(cpu, seg_start, pos - seg_start, offset, label))
    return pos


#: below this many decompressed bytes one thread does it all
_THREADED_DECOMPRESS = 8 << 20


def _decompress_into(buf: np.ndarray, chunks: list[_Chunk], segments: list[CpuSegment],
                     compression: str, info: TraceDat, path: str) -> None:
    """Decompress every chunk straight into its place in `buf`; a chunk that fails ends its
    CPU's data there.

    A big buffer is filled by two threads, each its half of the chunks (zstd and zlib, and
    numpy's copy, release the GIL): on a VM the first touch of fresh memory waits for the
    host, and two CPUs wait side by side (a cold v7 decode spent 0.29 s here on one thread,
    most of it in page faults). Each thread has its own decompression context."""
    total = sum(chunk.size for chunk in chunks)
    halves = [chunks]
    if total >= _THREADED_DECOMPRESS and (os.cpu_count() or 1) > 1:
        # split where half of the bytes are done
        middle = int(np.searchsorted(np.cumsum([c.size for c in chunks]), total // 2))
        halves = [chunks[:middle], chunks[middle:]]

    def fill(part: list[_Chunk]) -> list[tuple[_Chunk, str]]:
        decompress = _decompressor(compression, path)
        failed = []
        for chunk in part:
            try:
                out = decompress(chunk.blob, chunk.size)
                n = min(len(out), chunk.size)
                buf[chunk.dest:chunk.dest + n] = np.frombuffer(out, np.uint8, n)
                if n != chunk.size:
                    failed.append((chunk, f"cpu{segments[chunk.segment].cpu} chunk "
                                          f"decompressed to {len(out)} of {chunk.size} bytes"))
            except Exception as e:    # zstd/zlib raise their own types: name the place
                failed.append((chunk, f"cannot decompress cpu{segments[chunk.segment].cpu} "
                                      f"chunk: {e}"))
        return failed

    if len(halves) == 1:
        failures = fill(chunks)
    else:
        with ThreadPoolExecutor(2) as pool:
            failures = [f for part in pool.map(fill, halves) for f in part]
    cut: set[int] = set()
    for chunk, failure in failures:             # in chunk order: the halves are in order
        if chunk.segment in cut:
            continue
        # the CPU's data ends before the first chunk that failed
        cut.add(chunk.segment)
        seg = segments[chunk.segment]
        segments[chunk.segment] = CpuSegment(seg.cpu, seg.start, chunk.dest - seg.start,
                                             seg.file_offset, seg.label)
        info.errors.append(InputError(failure, path=path, offset=chunk.at))


def read(path: Path) -> tuple[TraceDat, np.ndarray, list[CpuSegment], object]:
    """Parse the metadata and gather the CPU data of every buffer into one byte array."""
    path_s = str(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror or e}", path=path_s) from None
    with f:
        try:
            # populated at once: one call maps the file's pages, not a fault per 64 KiB
            data = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED | _MAP_POPULATE,
                             prot=mmap.PROT_READ)
        except (ValueError, OSError):
            data = f.read()
    r = _Reader(data, path_s)
    info = TraceDat()
    _read_header(r, info)
    if info.version >= 7:
        _read_v7(r, info)
    else:
        _read_v6(r, info)
    if info.header_page is None:
        raise r.fail("no header_page", 0)
    if info.header_page.page_size != info.page_size:
        info.header_page = PageHeader(**{**info.header_page.__dict__,
                                         "data_size": info.page_size -
                                         info.header_page.data_offset})
    chunks: list[_Chunk] = []
    segments: list[CpuSegment] = []
    pos = 0
    for buffer in info.buffers:
        pos = _cpu_data(r, info, buffer, chunks, segments, pos)
    if any(b.compressed for b in info.buffers):
        # one buffer, each chunk decompressed into its own place: no per-chunk arrays to join
        buf = np.empty(pos, np.uint8)
        _decompress_into(buf, chunks, segments, info.compression, info, path_s)
    else:
        buf = np.frombuffer(data, np.uint8)
    del chunks
    return info, buf, segments, data


def _time_shift(info: TraceDat, path) -> tracedat_clock.TimeShift | None:
    """The TIME_SHIFT option, parsed; one that does not parse is reported and not applied
    (libtracecmd refuses the whole file)."""
    if "time_shift" not in info.options:
        return None
    data, at = info.options["time_shift"]
    try:
        return tracedat_clock.parse_time_shift(data)
    except ValueError as e:
        info.errors.append(InputError(f"TIME_SHIFT option not applied: {e}", path=str(path),
                                      offset=at))
        return None


def _host_synced(events: pl.DataFrame, shift: tracedat_clock.TimeShift) -> pl.DataFrame:
    """Times moved per CPU onto the host's clock; the rows then in that time order, CPU
    order breaking ties (as trace-cmd merges the CPUs by corrected time), ``seq`` renumbered
    in it. Where samples make a CPU's corrected times go backwards (an offset falling faster
    than time), its rows are put in time order; trace-cmd's merge keeps their record order."""
    ts = events.get_column("ts_ns")
    cpu = events.get_column("cpu").fill_null(-1).to_numpy()
    moved = tracedat_clock.host_sync(ts.fill_null(0).to_numpy(), cpu, shift)
    moved = pl.when(pl.col("ts_ns").is_not_null()).then(pl.Series(moved)).alias("ts_ns")
    return (events.with_columns(moved).sort(["ts_ns", "cpu"], maintain_order=True, nulls_last=True)
            .with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("seq")))


def parse(path: Path, raw_text: str = "untyped") -> Parsed:
    """Decode a trace.dat; `raw_text` as in :func:`kmltrace.formats.ringbuffer.decode`."""
    info, buf, segments, mapping = read(path)

    def release():
        # the file's pages have been read: they need not stay resident
        if isinstance(mapping, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
            try:
                mapping.madvise(mmap.MADV_DONTNEED)
            except (OSError, ValueError):
                pass

    box = [buf]
    del buf
    # box.pop(): the decode holds the only reference, and frees the pages once read
    decoded = decode(box.pop(), segments, info.formats, info.header_page, path=str(path),
                     long_size=info.long_size, cmdlines=info.cmdlines, raw_text=raw_text,
                     release=release)
    events = decoded.events.with_columns(
        pl.lit(str(path)).alias("file"))
    # a guest's file of a host-guest recording: its times on the host's clock
    shift = _time_shift(info, path)
    if shift is not None:
        events = _host_synced(events, shift)
    # TSC counts -> ns, --date/offset options: the times trace-cmd report prints
    times = tracedat_clock.corrected(pl.col("ts_ns"), info.options)
    if times is not None:
        events = events.with_columns(times.alias("ts_ns"))
    # the clock of the buffers that hold data (an extract -B file's top buffer is empty)
    clocks = [b.clock for b in info.buffers if b.clock and any(size for _, _, size in b.cpus)]
    clocks = clocks or [b.clock for b in info.buffers if b.clock] or [info.options.get("clock")]
    stats = stats_counts(info.options.get("cpustat", []))
    meta = {
        "lost_events": lost_events(decoded.lost_events, decoded.lost_unknown,
                                   stats.get("overrun", 0) + stats.get("dropped events", 0)),
        "lost_unknown_pages": decoded.lost_unknown,
        "precision": "ns",
        "clock": clocks[0] if clocks else None,
        "cpus": info.options.get("cpus", max((c for b in info.buffers for c, _, _ in b.cpus),
                                             default=-1) + 1),
        "version": info.version,
        "compression": info.compression,
        "buffers": [b.name for b in info.buffers],
        "pages": decoded.pages,
        "damaged_pages": decoded.damaged_pages,
        "damaged_records": decoded.damaged_records,
        "formats": len(info.formats),
        "kallsyms_bytes": len(info.kallsyms),
        "printk_formats": info.printk.decode("utf-8", "backslashreplace"),
    }
    if info.kallsyms:
        meta["kallsyms_text"] = info.kallsyms.decode("utf-8", "backslashreplace")
    if "uname" in info.options:
        meta["kernel"] = str(info.options["uname"]).split()[2] \
            if len(str(info.options["uname"]).split()) > 2 else info.options["uname"]
    for key in ("uname", "tracecmd_version", "tsc2nsec"):
        if key in info.options:
            meta[key] = info.options[key]
    for key, texts in (("ts_offset", "ts_offsets"), ("date", "dates")):
        if info.options.get(texts):
            meta[key] = info.options[texts][-1]
    if times is not None or shift is not None:
        meta["times_corrected"] = {"tsc2nsec": tracedat_clock.tsc2nsec(info.options) is not None,
                                   "offset_ns": tracedat_clock.offset_ns(info.options)}
        if shift is not None:
            meta["times_corrected"]["time_shift"] = shift.summary()
    return Parsed(path=str(path), format=NAME, events=schema.conform(events),
                  errors=info.errors + decoded.errors, meta=meta)
