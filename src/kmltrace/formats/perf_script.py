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


def columns(text: pl.Expr) -> list[pl.Expr]:
    pos = text.str.find(ftrace_text.CPU_COLUMN_RE)
    head = text.str.slice(0, pos).str.strip_chars().str.extract_groups(HEAD_RE)
    tail = text.str.slice(pos).str.strip_chars_start().str.splitn("]", 2)
    ts_body = tail.struct[1].str.strip_chars_start().str.splitn(": ", 2)
    body = ts_body.struct[1].str.strip_chars_start().str.replace(r"^\d+\s+", "")
    slow = (pl.when(text.str.count_matches(ftrace_text.CPU_COLUMN_RE) > 1).then(text)
            .str.extract_groups(PERF_LINE_CAPTURE_RE))
    many = slow.struct.field("first").is_not_null()

    def pick(slow_name, fast):
        return pl.when(many).then(slow.struct.field(slow_name)).otherwise(fast)

    first = pick("first", head.struct.field("first")).cast(pl.Int32, strict=False)
    tid = pick("tid", head.struct.field("tid")).cast(pl.Int32, strict=False)
    body = pick("body", body)
    name_raw = body.str.splitn(": ", 2)
    bare = name_raw.struct[1].is_null()
    name = pl.when(bare).then(body.str.strip_suffix(":")).otherwise(name_raw.struct[0])
    system_event = name.str.splitn(":", 2)
    return [
        pick("comm", head.struct.field("comm")).alias("comm"),
        pl.coalesce(tid, first).alias("pid"),
        pl.when(tid.is_not_null()).then(first).alias("tgid"),
        pick("cpu", tail.struct[0].str.slice(1)).cast(pl.Int32, strict=False).alias("cpu"),
        pl.lit(None, dtype=pl.String).alias("flags"),
        pick("ts", ts_body.struct[0]).alias("ts_text"),
        system_event.struct[0].alias("perf_system"),
        system_event.struct[1].alias("event"),
        pl.when(bare).then(pl.lit("")).otherwise(name_raw.struct[1]).alias("raw"),
    ]


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
