"""The C line scanner's side of the text pipeline (formats/_textscan.c, built when a compiler
is there; ``KMLTRACE_PURE=1`` turns it off).

The scanner takes the lines it is sure of (printable ASCII, header exactly as the grammar
says) straight to columns, and decodes the hot tracepoints' fields (``fast`` entries of
fields.py). Every other line comes back as text with its line number, and goes through the
polars pipeline as before, so both paths give the same table (tests/formats/
test_text_scan.py compares them on every sample).
"""

from __future__ import annotations

import io
import mmap
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from kmltrace.accel import use_accelerator
from kmltrace.formats import fields as fieldtable

#: Bytes scanned at a time when streaming (ingest). A piece's working memory is many times its
#: text: on the 205 MB bench capture, 4 MiB pieces keep ingest's peak at 1.03-1.42x the text,
#: 8 MiB ones reached ~1.7x.
SCAN_BYTES = 1 << 22
#: ... and for a whole parse (parse(): the table is kept whole anyway): 2.75 -> 1.87 s on the
#: 205 MB bench text against 4 MiB pieces
WHOLE_SCAN_BYTES = 1 << 24

_DEFERRED_READ = dict(has_header=False, separator="\x00", quote_char=None, new_columns=["text"],
                      schema={"text": pl.String}, encoding="utf8-lossy",
                      truncate_ragged_lines=True, raise_if_empty=False, comment_prefix=None,
                      extra_columns="ignore")


def looks_compressed(head: bytes) -> bool:
    """Whether polars' reader takes this file start for gzip, zlib or zstd data (it then
    refuses the file, which the pure path reports as it always did)."""
    return (head.startswith((b"\x1f\x8b", b"\x28\xb5\x2f\xfd"))
            or (len(head) > 1 and head[0] == 0x78 and head[1] in (0x01, 0x5e, 0x9c, 0xda)))


def scanner():
    """The C scanner module, or None (not built, or KMLTRACE_PURE=1)."""
    return use_accelerator("_textscan")


class _Capsules:
    """The scanner's Arrow capsules, in the shape pl.Series imports (PyCapsule interface)."""

    def __init__(self, pair):
        self.pair = pair

    def __arrow_c_array__(self, requested_schema=None):
        return self.pair


@dataclass
class Scanned:
    fast: pl.DataFrame        # the lines taken: header columns, event, raw, __fast_* fields
    deferred: pl.DataFrame    # the other lines: line, __offset, text
    lines: int                # lines in the data
    frac_digits: int | None   # the longest timestamp fraction among `fast`
    first_nul: int | None     # the first line holding a NUL byte


@dataclass(frozen=True)
class Setup:
    """What a scan of one grammar needs besides the data."""
    grammar: str                      # tracefs, tracecmd, perf
    decoders: dict[bytes, int]        # fields.fast_decoders, plus names left to the pipeline
    systems: dict[bytes, bytes]       # fields.SYSTEM_OF (tracefs prints no system)


def setup(module, grammar: str, deferred_events: tuple[str, ...]) -> Setup:
    decoders = fieldtable.fast_decoders(module)
    decoders.update({name.encode(): module.DEFER for name in deferred_events})
    systems = {name.encode(): system.encode() for name, system in fieldtable.SYSTEM_OF.items()}
    return Setup(grammar, decoders, systems)


def scan(data, module, first_line: int, how: Setup, prefixes: tuple[bytes, ...]) -> Scanned:
    code = {"tracefs": module.TRACEFS, "tracecmd": module.TRACECMD,
            "perf": module.PERF}[how.grammar]
    pair, text, lines, offsets, count, frac, nul = module.scan(
        data, first_line, code, prefixes, how.decoders, how.systems)
    fast = pl.Series(_Capsules(pair)).struct.unnest()
    line_numbers = _int64s(lines)
    if text:
        # the same reader as the pure path (same lossy UTF-8, same cut at a NUL byte); a blank
        # first line keeps it from taking a line that starts like compressed data for a
        # compressed stream
        deferred = pl.scan_csv(io.BytesIO(b"\n" + text), **_DEFERRED_READ).collect().slice(1)
        if deferred.height != len(line_numbers):
            raise pl.exceptions.ComputeError(
                f"the deferred lines read back as {deferred.height} rows, not "
                f"{len(line_numbers)}")
        deferred = deferred.with_columns(
            pl.Series("line", line_numbers, dtype=pl.Int64),
            pl.Series("__offset", _int64s(offsets), dtype=pl.Int64)
        ).select("line", "__offset", "text")
    else:
        deferred = pl.DataFrame(schema={"line": pl.Int64, "__offset": pl.Int64, "text": pl.String})
    return Scanned(fast=fast, deferred=deferred, lines=count,
                   frac_digits=None if frac < 0 else frac, first_nul=None if nul < 0 else nul)


def _int64s(data: bytes) -> memoryview:
    """The scanner's int64 array (native byte order), as polars takes it without numpy."""
    return memoryview(data).cast("q")


class Pieces:
    """The file memory-mapped and cut into pieces of whole lines, each scanned in a worker
    thread while the caller turns the one before into a table (the scan runs without the
    GIL). Where the next piece starts is only known once this one is scanned (at its last
    taken line), so the caller submits each next piece itself."""

    def __init__(self, path: Path, size: int = SCAN_BYTES):
        self.size = size
        self._file = open(path, "rb")
        self.length = os.fstat(self._file.fileno()).st_size
        self._map = (mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
                     if self.length else None)
        self.ends_with_newline = self.length == 0 or self._map[-1:] == b"\n"
        self._pool = ThreadPoolExecutor(max_workers=1)

    def end_of_piece(self, start: int) -> int:
        """Where a piece from `start` ends: after the last line end within `size` bytes
        (or the first one beyond, for a longer line), or the end of the file."""
        if start + self.size >= self.length:
            return self.length
        cut = self._map.rfind(b"\n", start, start + self.size)
        if cut < 0:
            cut = self._map.find(b"\n", start + self.size)
            if cut < 0:
                return self.length
        return cut + 1

    def submit(self, fn, start: int, end: int, *args):
        """Run fn(piece bytes, *args) in the worker; returns the future."""
        view = memoryview(self._map)[start:end]
        return self._pool.submit(fn, view, *args)

    def release(self, start: int, end: int) -> None:
        """The pages of [start, end) are done with: out of the resident set (they stay in
        the page cache), so a big file does not count in the peak memory."""
        page = mmap.PAGESIZE
        start -= start % page
        if end > start and hasattr(self._map, "madvise"):
            self._map.madvise(mmap.MADV_DONTNEED, start, min(end, self.length) - start)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:     # a view is still alive somewhere: the GC closes it
                pass
        self._file.close()
