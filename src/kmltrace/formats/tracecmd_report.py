"""``trace-cmd report`` text: ``cpus=N`` (after ``version = 6`` on some versions), then
tracefs-like lines with the event name padded, prefixed by the buffer name for instances::

    version = 6
    cpus=2
    kmltrace-x:             bash-6224  [000]   343.291439: sys_enter:            NR 33 (b, ...)
                  wl-6248  [000] d....  343.291791: page_fault_user:      address=0x... ...
                bash-6224  [000]   343.291467: print:                tracing_mark_write: hi
    CPU:1 [481 EVENTS DROPPED]
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import polars as pl

from kmltrace.formats import Parsed
from kmltrace.formats import ftrace_text, text_lines, text_pipeline
from kmltrace.formats.sniff import read_head

NAME = "tracecmd_report"

HEADER_RE = r"^(?:version = \d+|cpus=\d+)$"
#: The buffer name trace-cmd puts before each line of an instance's events.
PREFIX_RE = r"^(?P<buffer>[^\s:]+): +(?P<rest>\S.*)$"


def sniff(head: bytes) -> bool:
    lines = text_lines.head_lines(head, limit=4)
    if not lines:
        return False
    header = [line for line in lines[:3] if re.match(HEADER_RE, line.strip())]
    return any(line.strip().startswith("cpus=") for line in header)


def buffer_names(head: bytes) -> list[str]:
    """Instance buffer names that prefix the lines (none for the top-level buffer)."""
    lines = text_lines.head_lines(head, limit=200) or []
    task = re.compile(ftrace_text.TASK_LINE_RE)
    prefix = re.compile(PREFIX_RE)
    names: set[str] = set()
    for line in lines:
        # a buffer name: "name: " at the very start, and the rest is a whole task line
        # (a task line itself starts with the right-aligned comm, never with "word: ")
        match = prefix.match(line)
        if match and task.search(match.group("rest")):
            names.add(match.group("buffer"))
    return sorted(names)


def read_header(head: bytes) -> dict:
    meta: dict = {}
    text = head[:4096].decode("utf-8", errors="replace")
    match = re.search(r"^cpus=(\d+)$", text, re.M)
    if match:
        meta["cpus"] = int(match.group(1))
    match = re.search(r"^version = (\d+)$", text, re.M)
    if match:
        meta["trace_dat_version"] = int(match.group(1))
    return meta


class _ReportParse(text_pipeline.TextParse):
    """trace-cmd report text batch by batch: instance buffer prefixes cut off every line."""

    def __init__(self, path: Path, **options):
        head = read_head(path)
        self.buffers = set(buffer_names(head))
        super().__init__(path, GRAMMAR, event_frame=ftrace_text.normalise_events,
                         lines_frame=self._cut_prefixes, events_done=self._late_prefixes,
                         **options)
        self.header_meta = read_header(head)

    def _cut_prefixes(self, lines: pl.LazyFrame) -> pl.LazyFrame:
        text = pl.col("text")
        for name in sorted(self.buffers):   # a slice, no regex
            prefix = f"{name}: "
            lines = lines.with_columns(pl.when(text.str.starts_with(prefix))
                                       .then(text.str.slice(len(prefix))).otherwise(text)
                                       .alias("text"))
        return lines

    def scan_prefixes(self) -> tuple[bytes, ...]:
        return tuple(f"{name}: ".encode() for name in sorted(self.buffers))

    def _late_prefixes(self, events: pl.DataFrame) -> pl.DataFrame:
        events, late = _late_buffer_prefixes(events)
        self.buffers.update(late)
        return events

    def _finish(self, truncated, **options):
        super()._finish(truncated, **options)
        if self.buffers:
            self.meta["buffers"] = sorted(self.buffers)


def text_parse(path: Path, **options) -> text_pipeline.TextParse:
    """The batch-by-batch parse (``kmltrace ingest`` streams it to parquet)."""
    return _ReportParse(Path(path), **options)


def parse(path: Path) -> Parsed:
    path = Path(path)
    parse = text_parse(path, whole=True)
    frames = list(parse.batches())
    if not frames:
        return Parsed(path=str(path), format=NAME, errors=parse.errors, meta={})
    events = frames[0] if len(frames) == 1 else pl.concat(frames, how="diagonal_relaxed")
    return Parsed(path=str(path), format=NAME, events=text_pipeline.in_column_order(events),
                  errors=parse.errors,
                  meta=parse.meta)


def _late_buffer_prefixes(events: pl.DataFrame) -> tuple[pl.DataFrame, list[str]]:
    """A buffer whose first line comes after the head: its name is left at the start of the
    comm ("name:     bash"; trace-cmd right-aligns the comm, so padding follows). Cut it."""
    comm = pl.col("comm")
    prefixed = comm.str.contains(LATE_PREFIX_RE)
    late = events.filter(prefixed)
    if late.height == 0:
        return events, []
    found = late.select(comm.str.extract(r"^([^\s:]+):")).to_series().unique().to_list()
    fixed = events.with_columns(
        pl.when(prefixed).then(comm.str.replace(r"^[^\s:]+:\s+", "")).otherwise(comm)
        .alias("comm"))
    return fixed, [name for name in found if name]


LATE_PREFIX_RE = r"^[^\s:]+:\s{2,}\S"

# trace-cmd pads event names ("sys_enter:            NR 33 ..."): the padding is not field text
GRAMMAR = text_pipeline.Grammar(
    what="trace-cmd report", source="ftrace", split=ftrace_text.split, exact=ftrace_text.exact,
    body=functools.partial(ftrace_text.body, strip_event_padding=True), header_re=HEADER_RE,
    scanner="tracecmd", scan_deferred=ftrace_text.RENAMED_EVENTS)
