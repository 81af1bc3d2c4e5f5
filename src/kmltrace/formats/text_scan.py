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
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import polars as pl

from kmltrace.accel import use_accelerator

#: Bytes scanned at a time: big enough that per-batch costs vanish, small enough that a
#: batch's columns stay a fraction of the text (a batch holds ~2.5 times its text).
SCAN_BYTES = 1 << 23

_DEFERRED_READ = dict(has_header=False, separator="\x00", quote_char=None, new_columns=["text"],
                      schema={"text": pl.String}, encoding="utf8-lossy",
                      truncate_ragged_lines=True, raise_if_empty=False, comment_prefix=None)


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


def scan(module, data: bytes, first_line: int, grammar: str, prefixes: tuple[bytes, ...],
         decoders: dict[bytes, int]) -> Scanned:
    code = {"tracefs": module.TRACEFS, "tracecmd": module.TRACECMD, "perf": module.PERF}[grammar]
    pair, text, lines, offsets, count, frac = module.scan(data, first_line, code, prefixes,
                                                          decoders)
    fast = pl.Series(_Capsules(pair)).struct.unnest()
    line_numbers = np.frombuffer(lines, dtype=np.int64)
    if text:
        # the same reader as the pure path: same lossy UTF-8, same cut at a NUL byte
        deferred = pl.read_csv(io.BytesIO(text), **_DEFERRED_READ)
        if deferred.height != len(line_numbers):
            raise pl.exceptions.ComputeError(
                f"the deferred lines read back as {deferred.height} rows, not "
                f"{len(line_numbers)}")
        deferred = deferred.with_columns(
            pl.Series("line", line_numbers), pl.Series("__offset", np.frombuffer(offsets, np.int64))
        ).select("line", "__offset", "text")
    else:
        deferred = pl.DataFrame(schema={"line": pl.Int64, "__offset": pl.Int64, "text": pl.String})
    return Scanned(fast=fast, deferred=deferred, lines=count,
                   frac_digits=None if frac < 0 else frac)


def chunks(path: Path, size: int = SCAN_BYTES) -> Iterator[tuple[bytes, bool]]:
    """(whole lines of about `size` bytes, whether it is the file's last piece); the last
    piece also holds a last line that lacks its newline."""
    with open(path, "rb") as f:
        pending = b""
        data = f.read(size)
        while data:
            following = f.read(size)
            if not following:
                yield pending + data, True
                return
            cut = data.rfind(b"\n") + 1
            if cut == 0:                     # no line end yet: read on
                pending += data
            else:
                yield pending + data[:cut], False
                pending = data[cut:]
            data = following
        if pending:
            yield pending, True
