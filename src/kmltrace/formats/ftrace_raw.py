"""Raw ring-buffer pages of a bundle's ``ftrace/`` directory (docs/INTERFACES.md).

The collector stores what tracefs hands out: ``cpu<N>.raw`` (pages read from
``per_cpu/cpu<N>/trace_pipe_raw``) beside ``header_page``, ``header_event``, the
``events/<system>/<event>/format`` files, ``saved_cmdlines``, ``saved_tgids``, ``trace_clock``
and ``stats/cpu<N>``. Raw pages mean nothing without those, so they are read only as a
directory, never sniffed as a lone file.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import polars as pl

from kmltrace import schema
from kmltrace.errors import InputError, KmltraceError
from kmltrace.formats import Parsed
from kmltrace.formats.event_format import FormatTable, parse_header_event, parse_header_page
from kmltrace.formats.ringbuffer import CpuSegment, decode

NAME = "ftrace_raw"


def _read_text(path: Path, required: bool = True) -> str | None:
    try:
        return path.read_text(errors="backslashreplace")
    except FileNotFoundError:
        if required:
            raise InputError("missing (raw pages cannot be decoded without it)",
                             path=str(path)) from None
        return None
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror or e}", path=str(path)) from None


def read_cmdlines(text: str | None) -> dict[int, str]:
    """``saved_cmdlines``: "PID COMM" per line."""
    out = {}
    for line in (text or "").splitlines():
        pid, _, comm = line.partition(" ")
        if pid.isdigit():
            out[int(pid)] = comm
    return out


def read_tgids(text: str | None) -> dict[int, int]:
    """``saved_tgids``: "PID TGID" per line."""
    out = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            out[int(parts[0])] = int(parts[1])
    return out


def _stats_lost(stats_dir: Path) -> dict[int, dict[str, int]]:
    """Per-CPU ``overrun`` and ``dropped events`` counts of ``stats/cpu<N>``."""
    out: dict[int, dict[str, int]] = {}
    if not stats_dir.is_dir():
        return out
    for f in stats_dir.iterdir():
        m = re.fullmatch(r"cpu(\d+)", f.name)
        if not m:
            continue
        values = {}
        for line in (_read_text(f, False) or "").splitlines():
            key, _, value = line.partition(":")
            value = value.strip()
            if value.isdigit():
                values[key.strip()] = int(value)
        out[int(m[1])] = values
    return out


def lost_events(page_counts: int, unknown_pages: int, stats_lost: int) -> int:
    """Events lost: the pages' stored counts; when some page could not store its count (a
    full page), the ring buffer's own overrun + dropped counters, if larger."""
    return max(page_counts, stats_lost) if unknown_pages else page_counts


def stats_counts(texts: list[str]) -> dict[str, int]:
    """Sum of the numeric lines of per-CPU ``stats`` texts (entries, overrun, ...)."""
    out: dict[str, int] = {}
    for text in texts:
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if value.strip().isdigit():
                out[key.strip()] = out.get(key.strip(), 0) + int(value)
    return out


def _read_pages(raws: list[tuple[int, Path]], errors: list) -> tuple[np.ndarray, list]:
    """The CPUs' page files read straight into one buffer (no per-file arrays to join), and
    each one's segment of it."""
    sizes = []
    for cpu, f in raws:
        try:
            sizes.append(f.stat().st_size)
        except OSError as e:
            errors.append(InputError(f"cannot read: {e.strerror or e}", path=str(f)))
            sizes.append(None)
    buf = np.empty(sum(size or 0 for size in sizes), np.uint8)
    view = memoryview(buf)
    segments, pos = [], 0
    for (cpu, f), size in zip(raws, sizes):
        if size is None:
            continue
        try:
            with open(f, "rb") as fh:
                got = fh.readinto(view[pos:pos + size]) or 0
        except OSError as e:
            errors.append(InputError(f"cannot read: {e.strerror or e}", path=str(f)))
            continue
        segments.append(CpuSegment(cpu, pos, got, 0, str(f)))
        pos += got
    del view
    return buf[:pos], segments


def parse_dir(path: Path, raw_text: str = "untyped") -> Parsed:
    """Decode a bundle's ``ftrace/`` directory (`path` is that directory or the bundle);
    `raw_text` as in :func:`kmltrace.formats.ringbuffer.decode`."""
    path = Path(path)
    if (path / "ftrace").is_dir() and not (path / "header_page").exists():
        path = path / "ftrace"
    errors: list[KmltraceError] = []
    header = parse_header_page(_read_text(path / "header_page"), path=str(path / "header_page"))
    parse_header_event(_read_text(path / "header_event"), path=str(path / "header_event"))
    # the kernel's long size is the commit word's size
    long_size = header.commit_size
    formats = FormatTable(long_size)
    for fmt_path in sorted((path / "events").glob("*/*/format")):
        try:
            formats.add(_read_text(fmt_path), fmt_path.parent.parent.name, path=str(fmt_path))
        except KmltraceError as e:
            errors.append(e)
    cmdlines = read_cmdlines(_read_text(path / "saved_cmdlines", False))
    tgids = read_tgids(_read_text(path / "saved_tgids", False))
    clock_text = _read_text(path / "trace_clock", False) or ""
    m = re.search(r"\[([^\]]+)\]", clock_text)
    clock = m[1] if m else (clock_text.strip() or None)

    raws = []
    for f in path.glob("cpu*.raw"):
        m = re.fullmatch(r"cpu(\d+)\.raw", f.name)
        if m:
            raws.append((int(m[1]), f))
    raws.sort()
    buf, segments = _read_pages(raws, errors)
    box = [buf]
    del buf
    # box.pop(): the decode holds the only reference, and frees the pages once read
    decoded = decode(box.pop(), segments, formats, header, path=str(path),
                     long_size=long_size, cmdlines=cmdlines, tgids=tgids, raw_text=raw_text)
    # the file column names each CPU's own .raw file (offsets are within it)
    files = {s.cpu: s.label for s in segments}
    events = decoded.events.with_columns(
        pl.col("cpu").replace_strict(list(files), list(files.values()), default=str(path),
                                     return_dtype=pl.String).alias("file"))
    stats = _stats_lost(path / "stats")
    overrun = sum(v.get("overrun", 0) for v in stats.values())
    dropped = sum(v.get("dropped events", 0) for v in stats.values())
    meta = {
        "lost_events": lost_events(decoded.lost_events, decoded.lost_unknown,
                                   overrun + dropped),
        "lost_unknown_pages": decoded.lost_unknown,
        "precision": "ns",
        "clock": clock,
        "cpus": len(stats) or len(raws),
        "pages": decoded.pages,
        "damaged_pages": decoded.damaged_pages,
        "damaged_records": decoded.damaged_records,
        "formats": len(formats),
        "overrun": overrun,
        "dropped_events": dropped,
    }
    return Parsed(path=str(path), format=NAME, events=schema.conform(events),
                  errors=errors + decoded.errors, meta=meta)
