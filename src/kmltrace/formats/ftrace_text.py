"""tracefs ``trace`` / ``trace_pipe`` text (any kernel from 4.x on, any usual option).

A line is ``comm-pid [(tgid)] [cpu] [flags] seconds.micros: event: fields``::

            bash-6058    [001] d....   323.272707: page_fault_user: address=0x556c... ip=...
            bash-6058    (   6058) [001] .....   323.273762: sys_enter: NR 33 (b, 1, ...)
              wl-6061    [000]    323.279419: local_timer_entry: vector=236     (no irq-info)
          <idle>-0       [001] d..2   100.000001: sched_switch: ...               (4.x: 4 flags)
            bash-6058    [001] ...1.   323.278494: tracing_mark_write: hello    (trace_marker)
            bash-6058    [001] .....   323.278494: do_user_addr_fault <-exc_page_fault (function)
    CPU:1 [LOST 481 EVENTS]

A comm may hold anything but a NUL (spaces, ``-``, digits, ``[bold]``, escape codes), so the
line is split at the ``[cpu]`` column and ``comm-pid`` is taken from its right end. Lines that
do not follow the grammar are reported (first few one by one, then a count), never dropped
silently.
"""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl

from kmltrace.formats import Parsed
from kmltrace.formats import text_lines, text_pipeline
from kmltrace.formats.sniff import read_head

NAME = "ftrace_text"

#: The whole grammar, without captures (a fast DFA match) to validate each line.
TASK_LINE_RE = (r"^\s*.*-\d+\s+(?:\(\s*(?:\d+|-+)\)\s+)?\[\d+\]\s+(?:[^\s:]{3,6}\s+)?"
                r"\d+(?:\.\d+)?:\s")
#: The same with captures; the lazy comm takes the leftmost split that lets the rest match,
#: used only for lines that hold more than one ``[digits]`` (a hostile comm or field text).
TASK_LINE_CAPTURE_RE = (r"^\s*(?P<comm>.*?)-(?P<pid>\d+)\s+(?:\(\s*(?P<tgid>\d+|-+)\)\s+)?"
                        r"\[(?P<cpu>\d+)\]\s+(?:(?P<flags>[^\s:]{3,6})\s+)?"
                        r"(?P<sec>\d+)(?:\.(?P<frac>\d+))?: (?P<body>.*)$")
CPU_COLUMN_RE = r"\s\[\d+\]\s"
#: Where the pid starts in "comm-pid[ (tgid)]": the last "-digits" that reaches the end.
PID_AT_END_RE = r"-\d+\s*(?:\(\s*(?:\d+|-+)\))?\s*$"
#: "[001] d....   323.272707" (the part before the first ": " after the comm-pid).
STAMP_RE = (r"^\[(?P<cpu>\d+)\]\s+(?:(?P<flags>[^\s:]{3,6})\s+)?"
            r"(?P<sec>\d+)(?:\.(?P<frac>\d+))?$")
#: The same, without captures: checks the piece before the slices cut it.
STAMP_CHECK_RE = r"^\[\d+\]\s+(?:[^\s:]{3,6}\s+)?\d+(?:\.\d+)?$"
FUNCTION_RE = r"^\S+ <-\S+$"


def sniff(head: bytes) -> bool:
    lines = text_lines.head_lines(head)
    if not lines:
        return False
    if lines[0].startswith("# tracer:"):
        return True
    data = [line for line in lines if not line.startswith("#")][:20]
    if not data:
        return False
    task = re.compile(TASK_LINE_RE)
    lost = re.compile(text_lines.LOST_RE)
    good = sum(1 for line in data if task.search(line) or lost.search(line))
    return good >= max(1, (len(data) + 1) // 2)


def split(frame: pl.LazyFrame, text: str) -> pl.LazyFrame:
    """Split task lines by positions: non-capturing searches (fast DFA scans) find the
    ``[cpu]`` column, the pid at the end of ``comm-pid`` and the ``": "`` after the timestamp;
    slices cut the parts out (capture groups cost ~10 times more per row). A line whose
    ``[cpu] flags ts`` piece does not follow the grammar although it has a ``[cpu]`` column
    (a hostile comm or field holding `` [1] ``) is flagged ``__many`` for the exact grammar."""
    line = pl.col(text)
    col = pl.col
    frame = frame.with_columns(line.str.find(CPU_COLUMN_RE).alias("__pos"))
    frame = frame.with_columns(
        line.str.slice(0, col("__pos")).alias("__head"),
        line.str.slice(col("__pos") + 1).alias("__tail"))
    frame = frame.with_columns(
        col("__head").str.find(PID_AT_END_RE).alias("__dash"),
        col("__tail").str.find(": ", literal=True).alias("__colon"),
        col("__tail").str.find("]", literal=True).alias("__close"))
    frame = frame.with_columns(
        col("__head").str.slice(0, col("__dash")).str.strip_chars_start().alias("comm"),
        col("__head").str.slice(col("__dash") + 1).str.strip_chars().alias("__ids"),
        col("__tail").str.slice(0, col("__colon")).alias("__stamp"),
        col("__tail").str.slice(col("__colon") + 2).alias("__body"))
    frame = frame.with_columns(
        col("__stamp").str.contains(STAMP_CHECK_RE).alias("__stamp_ok"),
        # "[001] d....   323.272707": past "] ", flags end at the first blank (if any)
        col("__stamp").str.slice(col("__close") + 1).str.strip_chars_start().alias("__rest"))
    frame = frame.with_columns(col("__rest").str.find(r"\s").alias("__blank"))
    time = (pl.when(col("__blank").is_null()).then(col("__rest"))
            .otherwise(col("__rest").str.slice(col("__blank")).str.strip_chars_start()))
    frame = frame.with_columns(time.alias("__time"))
    frame = frame.with_columns(col("__time").str.find(".", literal=True).alias("__dot"))
    # "6058" or "6058    (   6058)" / "6058    (-------)" with record-tgid
    has_tgid = col("__ids").str.ends_with(")")
    tgid_ids = pl.when(has_tgid).then(col("__ids")).str.splitn("(", 2)
    ok = col("__stamp_ok")
    frame = frame.with_columns(
        pl.when(has_tgid).then(tgid_ids.struct[0].str.strip_chars()).otherwise(col("__ids"))
        .cast(pl.Int32, strict=False).alias("pid"),
        tgid_ids.struct[1].str.strip_chars(" )").cast(pl.Int32, strict=False).alias("tgid"),
        pl.when(ok).then(col("__stamp").str.slice(1, col("__close") - 1))
        .cast(pl.Int32, strict=False).alias("cpu"),
        pl.when(ok & col("__blank").is_not_null()).then(col("__rest").str.slice(0, col("__blank")))
        .alias("flags"),
        pl.when(ok).then(col("__time").str.slice(0, col("__dot"))).alias("ts_sec"),
        pl.when(ok & col("__dot").is_not_null()).then(col("__time").str.slice(col("__dot") + 1))
        .alias("ts_frac"),
    )
    parsed = (col("pid").is_not_null() & col("cpu").is_not_null()
              & col("__body").is_not_null())
    # only lines the split failed on are tested for a "[cpu]" column (a null costs nothing)
    many = pl.when(~parsed).then(col("__pos").is_not_null()).fill_null(False)
    return frame.with_columns(many.alias("__many")).drop(
        "__pos", "__head", "__tail", "__dash", "__colon", "__close", "__ids", "__stamp",
        "__stamp_ok", "__rest", "__blank", "__time", "__dot")


def exact(frame: pl.LazyFrame, text: str) -> pl.LazyFrame:
    """The same split with one capturing regex: the lazy comm takes the leftmost split that
    lets the whole rest of the line match (slow; for the rare ambiguous lines only)."""
    groups = pl.col(text).str.extract_groups(TASK_LINE_CAPTURE_RE).struct.field
    return frame.with_columns(
        groups("comm").alias("comm"),
        groups("pid").cast(pl.Int32, strict=False).alias("pid"),
        groups("tgid").cast(pl.Int32, strict=False).alias("tgid"),
        groups("cpu").cast(pl.Int32, strict=False).alias("cpu"),
        groups("flags").alias("flags"),
        groups("sec").alias("ts_sec"),
        groups("frac").alias("ts_frac"),
        groups("body").alias("__body"),
    )


def body(frame: pl.LazyFrame, *, strip_event_padding: bool = False) -> pl.LazyFrame:
    """``event: fields`` -> event, raw; ``func <-parent`` (function tracer) -> function."""
    col = pl.col
    frame = frame.with_columns(col("__body").str.find(": ", literal=True).alias("__split"))
    no_fields = col("__split").is_null() & col("lost").is_null()
    # the rare lines without ": " are tested alone (a null costs next to nothing)
    lone = pl.when(no_fields).then(col("__body"))
    is_function = lone.str.contains(FUNCTION_RE)
    bare = lone.str.ends_with(":")  # an event with no fields
    event = (pl.when(~no_fields).then(col("__body").str.slice(0, col("__split")))
             .when(is_function).then(pl.lit("function"))
             .when(bare).then(lone.str.strip_suffix(":"))
             .otherwise(lone))
    raw = col("__body").str.slice(col("__split") + 2)
    if strip_event_padding:
        raw = raw.str.strip_chars_start()
    raw = (pl.when(~no_fields).then(raw).when(is_function).then(col("__body"))
           .otherwise(pl.lit("")))
    return frame.with_columns(event.alias("event"), raw.alias("raw")).drop("__split")


#: the event names normalise_events changes
RENAMED_EVENTS = ("tracing_mark_write", "<stack trace>", "<user stack trace>")

GRAMMAR = text_pipeline.Grammar(what="tracefs trace", source="ftrace", split=split,
                                exact=exact, body=body, scanner="tracefs",
                                scan_deferred=RENAMED_EVENTS)


def normalise_events(frame: pl.LazyFrame) -> pl.LazyFrame:
    """tracefs names ftrace:print after its writer: make it ``print`` with the writer in raw."""
    marker = pl.col("event") == "tracing_mark_write"
    event = (pl.when(marker).then(pl.lit("print"))
             .when(pl.col("event") == "<stack trace>").then(pl.lit("kernel_stack"))
             .when(pl.col("event") == "<user stack trace>").then(pl.lit("user_stack"))
             .otherwise(pl.col("event")))
    return frame.with_columns(
        event.alias("event"),
        pl.when(marker).then(pl.lit("tracing_mark_write: ") + pl.col("raw"))
        .otherwise(pl.col("raw")).alias("raw"),
    )


def read_header(head: bytes) -> dict:
    """What the ``#`` header says: cpus (``#P:2``), entries overwritten in the ring buffer."""
    meta: dict = {}
    text = head.decode("utf-8", errors="replace")
    match = re.search(r"^# entries-in-buffer/entries-written: (\d+)/(\d+)\s+#P:(\d+)", text, re.M)
    if match:
        in_buffer, written, cpus = map(int, match.groups())
        meta["cpus"] = cpus
        meta["entries_overwritten"] = max(0, written - in_buffer)
    match = re.search(r"^# tracer: (\S+)", text, re.M)
    if match:
        meta["tracer"] = match.group(1)
    return meta


def text_parse(path: Path, **options) -> text_pipeline.TextParse:
    """The batch-by-batch parse (``kmltrace ingest`` streams it to parquet)."""
    path = Path(path)
    parse = text_pipeline.TextParse(path, GRAMMAR, event_frame=normalise_events, **options)
    parse.header_meta = read_header(read_head(path))
    return parse


def parse(path: Path) -> Parsed:
    path = Path(path)
    events, errors, meta = text_pipeline.run(path, GRAMMAR, event_frame=normalise_events)
    meta.update(read_header(read_head(path)))
    if events is None:
        return Parsed(path=str(path), format=NAME, errors=errors, meta={})
    return Parsed(path=str(path), format=NAME, events=events, errors=errors, meta=meta)
