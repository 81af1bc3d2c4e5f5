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
from kmltrace.formats import ftrace_text, text_lines, text_pipeline

NAME = "perf_script"

PERF_LINE_RE = (r"^\s*.*\S\s+\d+(?:/\d+)?\s+\[\d+\]\s+\d+\.\d+:\s+(?:\d+\s+)?"
                r"[\w.-]+:[\w.-]+:(?:\s|$)")
PERF_LINE_CAPTURE_RE = (r"^\s*(?P<comm>.*?\S)\s+(?P<first>\d+)(?:/(?P<tid>\d+))?\s+\[(?P<cpu>\d+)\]\s+"
                        r"(?P<sec>\d+)\.(?P<frac>\d+):\s+(?P<body>(?:\d+\s+)?[\w.-]+:[\w.-]+:(?:\s.*)?)$")
#: "[000]   352.738789" (the part before the first ": " after the pid)
STAMP_RE = r"^\[(?P<cpu>\d+)\]\s+(?P<sec>\d+)\.(?P<frac>\d+)$"
BODY_RE = r"^(?:\d+\s+)?[\w.-]+:[\w.-]+:(?:\s|$)"
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


def split(frame: pl.LazyFrame, text: str) -> pl.LazyFrame:
    """Split sample lines by positions (see ftrace_text.split)."""
    line = pl.col(text)
    col = pl.col
    frame = frame.with_columns(
        line.str.find(ftrace_text.CPU_COLUMN_RE).alias("__pos"),
        (line.str.count_matches(ftrace_text.CPU_COLUMN_RE) > 1).alias("__many"))
    frame = frame.with_columns(
        line.str.slice(0, col("__pos")).str.strip_chars().str.extract_groups(HEAD_RE)
        .alias("__head"),
        line.str.slice(col("__pos") + 1).alias("__tail"))
    frame = frame.with_columns(col("__tail").str.find(": ", literal=True).alias("__colon"))
    frame = frame.with_columns(
        col("__tail").str.slice(0, col("__colon")).str.extract_groups(STAMP_RE).alias("__stamp"),
        col("__tail").str.slice(col("__colon") + 2).str.strip_chars_start().alias("__body"))
    # a sample line names its tracepoint "system:event:" (anchored: reads only the start)
    frame = frame.with_columns(
        pl.when(col("__body").str.contains(BODY_RE)).then(col("__body")).alias("__body"))
    head = col("__head").struct.field
    stamp = col("__stamp").struct.field
    return frame.with_columns(
        head("comm").alias("comm"),
        head("first").alias("__first"), head("tid").alias("__tid"),
        stamp("cpu").cast(pl.Int32, strict=False).alias("cpu"),
        stamp("sec").alias("ts_sec"), stamp("frac").alias("ts_frac"),
    ).pipe(_ids).drop("__pos", "__head", "__tail", "__colon", "__stamp")


def exact(frame: pl.LazyFrame, text: str) -> pl.LazyFrame:
    groups = pl.col(text).str.extract_groups(PERF_LINE_CAPTURE_RE).struct.field
    return frame.with_columns(
        groups("comm").alias("comm"), groups("first").alias("__first"),
        groups("tid").alias("__tid"),
        groups("cpu").cast(pl.Int32, strict=False).alias("cpu"),
        groups("sec").alias("ts_sec"), groups("frac").alias("ts_frac"),
        groups("body").alias("__body"),
    ).pipe(_ids)


def _ids(frame: pl.LazyFrame) -> pl.LazyFrame:
    """"tid" or "pid/tid": the kernel task id is the tid (our pid), the first the tgid."""
    first = pl.col("__first").cast(pl.Int32, strict=False)
    tid = pl.col("__tid").cast(pl.Int32, strict=False)
    return frame.with_columns(
        pl.coalesce(tid, first).alias("pid"),
        pl.when(tid.is_not_null()).then(first).alias("tgid"),
        pl.lit(None, dtype=pl.String).alias("flags"),
    ).drop("__first", "__tid")


def body(frame: pl.LazyFrame) -> pl.LazyFrame:
    """``[period ]system:event: fields`` -> perf_system, event, raw."""
    col = pl.col
    # perf prints the period before the event when asked (-F period): rare, tested alone
    numbered = col("__body").str.head(1).str.contains(r"^\d")
    body_text = (pl.when(numbered).then(col("__body").str.replace(r"^\d+\s+", ""))
                 .otherwise(col("__body")))
    frame = frame.with_columns(body_text.alias("__body"))
    frame = frame.with_columns(col("__body").str.find(": ", literal=True).alias("__split"))
    bare = col("__split").is_null()
    name = (pl.when(bare).then(col("__body").str.strip_suffix(":"))
            .otherwise(col("__body").str.slice(0, col("__split"))))
    frame = frame.with_columns(name.str.splitn(":", 2).alias("__name"))
    return frame.with_columns(
        col("__name").struct[0].alias("perf_system"),
        col("__name").struct[1].alias("event"),
        pl.when(bare).then(pl.lit("")).otherwise(col("__body").str.slice(col("__split") + 2))
        .alias("raw"),
    ).drop("__split", "__name")


GRAMMAR = text_pipeline.Grammar(what="perf script", source="perf", split=split, exact=exact,
                                body=body, system=pl.col("perf_system"),
                                stack_re=f"{CALLCHAIN_RE}|{text_lines.STACK_RE}",
                                scanner="perf")


def _drop_perf_system(events: pl.DataFrame) -> pl.DataFrame:
    return events.drop("perf_system", strict=False)


def text_parse(path: Path, **options) -> text_pipeline.TextParse:
    """The batch-by-batch parse (``kmltrace ingest`` streams it to parquet)."""
    parse = text_pipeline.TextParse(Path(path), GRAMMAR, events_done=_drop_perf_system,
                                    **options)
    parse.header_meta = {}
    return parse


def parse(path: Path) -> Parsed:
    path = Path(path)
    events, errors, meta = text_pipeline.run(path, GRAMMAR, events_done=_drop_perf_system)
    if events is None:
        return Parsed(path=str(path), format=NAME, errors=errors, meta={})
    return Parsed(path=str(path), format=NAME, events=events, errors=errors, meta=meta)
