"""Shared pieces of the text trace parsers (tracefs text, trace-cmd report, perf script).

Lines are read by polars' CSV reader with a separator that cannot occur in a text trace
(NUL), so each line becomes one string row, multi-threaded and without a Python loop. All
parsing after that is whole-column expressions.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Iterator

import polars as pl

from kmltrace.errors import InputError, KmltraceError

#: Bytes of text read and parsed at a time when streaming (``kmltrace ingest``). A batch's
#: working memory is ~50 times this (intermediate columns, allocator slack), so small
#: batches bound the peak; smaller ones cost per-batch overhead. Measured on the 205 MB bench
#: capture: 2 MiB -> peak RSS 1.05-1.15x the text, 4 MiB -> 1.3-1.5x, at ~6 % less CPU.
BATCH_BYTES = 1 << 21

#: Not looked up yet (a NUL byte's line, ...)
UNKNOWN = object()

#: How many unparsable lines are reported one by one before a single summary error.
ERRORS_SHOWN = 5

#: "CPU:1 [LOST 481 EVENTS]" (tracefs) and "CPU:1 [481 EVENTS DROPPED]" (trace-cmd).
LOST_RE = r"^\s*CPU:\s*(\d+)\s+\[(?:LOST (\d+) EVENTS|(\d+) EVENTS DROPPED)\]\s*$"

#: Lines of a kernel stack trace (the `stacktrace` option) that follow an event.
STACK_RE = r"^\s*(?:=> |<stack trace>|<user stack trace>)"


def scan_lines(path: Path) -> pl.LazyFrame:
    """The file as rows (``line``: 1-based Int64, ``text``: String; a blank line is null)."""
    return (
        pl.scan_csv(path, has_header=False, separator="\x00", quote_char=None,
                    new_columns=["text"], schema={"text": pl.String}, row_index_name="line",
                    row_index_offset=1, encoding="utf8-lossy", truncate_ragged_lines=True,
                    raise_if_empty=False, comment_prefix=None, extra_columns="ignore")
        .with_columns(pl.col("line").cast(pl.Int64))
    )


_READ_OPTIONS = dict(has_header=False, separator="\x00", quote_char=None, new_columns=["text"],
                     schema={"text": pl.String}, encoding="utf8-lossy",
                     truncate_ragged_lines=True, raise_if_empty=False, comment_prefix=None)


def read_batches(path: Path, batch_bytes: int = BATCH_BYTES) -> Iterator[pl.DataFrame]:
    """The file as frames of whole lines (``line``: 1-based Int64 counted across batches,
    ``text``: String; a blank line is null), each from about `batch_bytes` of text."""
    first_line = 1
    with open(path, "rb") as f:
        pending: list[bytes] = []      # text after the last line end read so far
        while True:
            data = f.read(batch_bytes)
            cut = data.rfind(b"\n") + 1
            if data and cut == 0:       # no line end in it: read on
                pending.append(data)
                continue
            chunk = b"".join([*pending, data[:cut]]) if data else b"".join(pending)
            pending = [data[cut:]] if data else []
            if not chunk:
                return
            frame = pl.read_csv(io.BytesIO(chunk), **_READ_OPTIONS, row_index_name="line",
                                row_index_offset=first_line)
            first_line += chunk.count(b"\n") + (0 if chunk.endswith(b"\n") else 1)
            del chunk
            yield frame.with_columns(pl.col("line").cast(pl.Int64))


def head_lines(head: bytes, limit: int = 40) -> list[str] | None:
    """The first complete lines of a file head, or None when it is not text at all."""
    if not head or b"\x00" in head:
        return None
    text = head.decode("utf-8", errors="replace")
    if text.count("\ufffd") > len(text) // 100 + 2:
        return None
    lines = text.split("\n")
    if len(head) >= 4096 and not text.endswith("\n"):
        lines = lines[:-1]   # the head cut the last line short
    return [line for line in lines[: limit * 4] if line.strip()][:limit]


def last_line_truncated(path: Path) -> int | None:
    """The number of the last line when the file does not end with a newline, else None.

    Every text trace ends its last line; a missing newline means the copy was cut short.
    """
    size = os.path.getsize(path)
    if size == 0:
        return None
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return None
        f.seek(0)
        count = 0
        while chunk := f.read(1 << 22):
            count += chunk.count(b"\n")
    return count + 1


def nul_line(path: Path) -> int | None:
    """The line of the first NUL byte (text traces have none; the reader cuts the line there).

    Read in chunks: a mapping of the whole file would count its size in the peak memory."""
    lines = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            at = chunk.find(b"\x00")
            if at >= 0:
                return lines + chunk.count(b"\n", 0, at) + 1
            lines += chunk.count(b"\n")
    return None


def line_errors(path: Path, bad: pl.DataFrame, what: str,
                total: int | None = None) -> list[KmltraceError]:
    """Errors for lines that do not follow the grammar: the first few one by one, then a count.

    `bad` has columns ``line`` and ``text`` (at least the first ERRORS_SHOWN + 1 bad lines);
    `total` counts them all (default: `bad`'s height).
    """
    total = bad.height if total is None else total
    errors: list[KmltraceError] = []
    for line, text in bad.head(ERRORS_SHOWN).iter_rows():
        errors.append(InputError(f"not a {what} line: {_excerpt(text)}", path=str(path), line=line))
    if total > ERRORS_SHOWN:
        first_unshown = bad["line"][ERRORS_SHOWN]
        errors.append(InputError(f"{total - ERRORS_SHOWN} more lines are not {what} lines "
                                 f"(the next one here)", path=str(path), line=first_unshown))
    return errors


def truncated_error(path: Path, line: int) -> KmltraceError:
    return InputError("truncated last line (no newline at the end): not used", path=str(path),
                      line=line)


def _excerpt(text: str | None, size: int = 60) -> str:
    text = "" if text is None else text
    return repr(text if len(text) <= size else text[:size] + "...")
