"""``perf script`` text of tracepoint samples (with or without ``--ns``)::

            perf  6315 [000]   352.738789:        raw_syscalls:sys_enter: NR 16 (d, 2400, ...)
              wl  6316 [000]   352.739517:  exceptions:page_fault_kernel: address=0x... ip=elf_load ...
            perf  6315/6315  [000]   352.738789837:  raw_syscalls:sys_exit: NR 16 = 0   (-F +pid, --ns)

The number before ``[cpu]`` is the thread id (the kernel task id: our ``pid``); with ``pid/tid``
the first is the thread group id. Callchain lines under a sample are counted, not parsed.
"""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl

from kmltrace.formats import Parsed
from kmltrace.formats import ftrace_text, text_lines

NAME = "perf_script"

PERF_LINE_RE = (r"^\s*.*\S\s+\d+(?:/\d+)?\s+\[\d+\]\s+\d+\.\d+:\s+(?:\d+\s+)?"
                r"[\w.-]+:[\w.-]+:(?:\s|$)")
PERF_LINE_CAPTURE_RE = (r"^\s*(?P<comm>.*?\S)\s+(?P<first>\d+)(?:/(?P<tid>\d+))?\s+\[(?P<cpu>\d+)\]\s+"
                        r"(?P<ts>\d+\.\d+):\s+(?:\d+\s+)?(?P<body>[\w.-]+:[\w.-]+:(?:\s.*)?)$")
HEAD_RE = r"^(?P<comm>.*\S)\s+(?P<first>\d+)(?:/(?P<tid>\d+))?$"
CALLCHAIN_RE = r"^\s+[0-9a-f]{4,} \S"


def sniff(head: bytes) -> bool:
    lines = text_lines.head_lines(head)
    if not lines:
        return False
    data = [line for line in lines if not line.startswith("#")
            and not re.match(CALLCHAIN_RE, line)][:20]
    if not data:
        return False
    regex = re.compile(PERF_LINE_RE)
    good = sum(1 for line in data if regex.search(line))
    return good >= max(1, (len(data) + 1) // 2)


def columns(frame: pl.LazyFrame, text: str) -> pl.LazyFrame:
    """Split the perf sample lines of column `text` (see ftrace_text.task_columns)."""
    line = pl.col(text)
    col = pl.col
    frame = frame.with_columns(
        line.str.find(ftrace_text.CPU_COLUMN_RE).alias("__pos"),
        (line.str.count_matches(ftrace_text.CPU_COLUMN_RE) > 1).alias("__many"))
    frame = frame.with_columns(
        line.str.slice(0, col("__pos")).str.strip_chars().str.extract_groups(HEAD_RE)
        .alias("__head"),
        line.str.slice(col("__pos")).str.strip_chars_start().str.splitn("]", 2).alias("__tail"),
        pl.when(col("__many")).then(line).str.extract_groups(PERF_LINE_CAPTURE_RE)
        .alias("__slow"))
    frame = frame.with_columns(
        col("__tail").struct[1].str.strip_chars_start().str.splitn(": ", 2).alias("__ts_body"))
    many = col("__many") & col("__slow").struct.field("first").is_not_null()

    def pick(slow_name, fast):
        return pl.when(many).then(col("__slow").struct.field(slow_name)).otherwise(fast)

    head = col("__head").struct.field
    body = col("__ts_body").struct[1].str.strip_chars_start().str.replace(r"^\d+\s+", "")
    frame = frame.with_columns(
        pick("comm", head("comm")).alias("comm"),
        pick("first", head("first")).cast(pl.Int32, strict=False).alias("__first"),
        pick("tid", head("tid")).cast(pl.Int32, strict=False).alias("__tid"),
        pick("cpu", col("__tail").struct[0].str.slice(1)).cast(pl.Int32, strict=False).alias("cpu"),
        pick("ts", col("__ts_body").struct[0]).alias("ts_text"),
        pick("body", body).alias("__body"),
    )
    frame = frame.with_columns(col("__body").str.splitn(": ", 2).alias("__name_raw"))
    bare = col("__name_raw").struct[1].is_null()
    name = (pl.when(bare).then(col("__body").str.strip_suffix(":"))
            .otherwise(col("__name_raw").struct[0]))
    frame = frame.with_columns(name.str.splitn(":", 2).alias("__system_event"))
    return frame.with_columns(
        pl.coalesce(col("__tid"), col("__first")).alias("pid"),
        pl.when(col("__tid").is_not_null()).then(col("__first")).alias("tgid"),
        pl.lit(None, dtype=pl.String).alias("flags"),
        col("__system_event").struct[0].alias("perf_system"),
        col("__system_event").struct[1].alias("event"),
        pl.when(col("__body").is_null()).then(None).when(bare).then(pl.lit(""))
        .otherwise(col("__name_raw").struct[1]).alias("raw"),
    ).drop("__pos", "__many", "__head", "__tail", "__slow", "__ts_body", "__first", "__tid",
           "__body", "__name_raw", "__system_event")


def classify(text: pl.Expr) -> pl.Expr:
    return (pl.when(text.is_null() | (text.str.strip_chars() == "")).then(pl.lit("blank"))
            .when(text.str.starts_with("#")).then(pl.lit("comment"))
            .when(text.str.contains(PERF_LINE_RE)).then(pl.lit("event"))
            .when(text.str.contains(CALLCHAIN_RE)).then(pl.lit("stack"))
            .when(text.str.contains(text_lines.LOST_RE)).then(pl.lit("lost"))
            .otherwise(pl.lit("bad")))


def parse(path: Path) -> Parsed:
    path = Path(path)
    events, errors, meta = ftrace_text.finish(
        path, text_lines.scan_lines(path), classify(pl.col("text")), columns, source="perf",
        what="perf script", system=pl.col("perf_system"), event_frame=lambda frame: frame)
    if events is None:
        return Parsed(path=str(path), format=NAME, errors=errors, meta={})
    events = events.drop("perf_system")
    return Parsed(path=str(path), format=NAME, events=events, errors=errors, meta=meta)
