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

from kmltrace.errors import InputError
from kmltrace.formats import Parsed
from kmltrace.formats import fields as fieldtable
from kmltrace.formats import text_lines
from kmltrace.formats.sniff import read_head
from kmltrace.schema import LOST_EVENTS, conform

NAME = "ftrace_text"

#: The whole grammar, without captures (a fast DFA match) to validate each line.
TASK_LINE_RE = (r"^\s*.*-\d+\s+(?:\(\s*(?:\d+|-+)\)\s+)?\[\d+\]\s+(?:[^\s:]{3,6}\s+)?"
                r"\d+(?:\.\d+)?:\s")
#: The same with captures; the lazy comm takes the leftmost split that lets the rest match,
#: used only for lines that hold more than one ``[digits]`` (a hostile comm or field text).
TASK_LINE_CAPTURE_RE = (r"^\s*(?P<comm>.*?)-(?P<pid>\d+)\s+(?:\(\s*(?P<tgid>\d+|-+)\)\s+)?"
                        r"\[(?P<cpu>\d+)\]\s+(?:(?P<flags>[^\s:]{3,6})\s+)?"
                        r"(?P<ts>\d+(?:\.\d+)?):\s(?P<body>.*)$")
CPU_COLUMN_RE = r"\s\[\d+\]\s"
#: Where the pid starts in "comm-pid[ (tgid)]": the last "-digits" that reaches the end.
PID_AT_END_RE = r"-\d+\s*(?:\(\s*(?:\d+|-+)\))?\s*$"
#: "[001] d....   323.272707" (the part before the first ": " after the comm-pid).
STAMP_RE = r"^\[(?P<cpu>\d+)\]\s+(?:(?P<flags>[^\s:]{3,6})\s+)?(?P<ts>\d+(?:\.\d+)?)$"
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


def task_columns(frame: pl.LazyFrame, text: str, *,
                 strip_event_padding: bool = False) -> pl.LazyFrame:
    """Split the task lines in column `text` into comm, pid, tgid, cpu, flags, ts_text, event
    and raw (null where `text` is null). Shared with trace-cmd report text (whose event names
    are padded with spaces).

    Positions are found with non-capturing searches (fast DFA scans) and the parts are cut
    out by slicing; capture groups only run on the short pieces. Each step is its own
    ``with_columns`` so that every intermediate is computed once.
    """
    line = pl.col(text)
    col = pl.col
    frame = frame.with_columns(
        line.str.find(CPU_COLUMN_RE).alias("__pos"),
        # the rare line with several "[digits]" (a hostile comm): the slow, exact split
        (line.str.count_matches(CPU_COLUMN_RE) > 1).alias("__many"))
    frame = frame.with_columns(
        line.str.slice(0, col("__pos")).alias("__head"),
        line.str.slice(col("__pos") + 1).alias("__tail"),
        pl.when(col("__many")).then(line).str.extract_groups(TASK_LINE_CAPTURE_RE)
        .alias("__slow"))
    frame = frame.with_columns(
        col("__head").str.find(PID_AT_END_RE).alias("__dash"),
        col("__tail").str.find(": ", literal=True).alias("__colon"))
    frame = frame.with_columns(
        col("__head").str.slice(0, col("__dash")).str.strip_chars_start().alias("__comm"),
        col("__head").str.slice(col("__dash") + 1).str.splitn("(", 2).alias("__ids"),
        col("__tail").str.slice(0, col("__colon")).str.extract_groups(STAMP_RE).alias("__stamp"),
        col("__tail").str.slice(col("__colon") + 2).alias("__body"))
    many = col("__many") & col("__slow").struct.field("pid").is_not_null()

    def pick(slow_name, fast):
        return pl.when(many).then(col("__slow").struct.field(slow_name)).otherwise(fast)

    stamp = col("__stamp").struct.field
    frame = frame.with_columns(
        pick("comm", col("__comm")).alias("comm"),
        pick("pid", col("__ids").struct[0].str.strip_chars()).cast(pl.Int32, strict=False)
        .alias("pid"),
        pick("tgid", col("__ids").struct[1].str.strip_chars(" )"))
        .cast(pl.Int32, strict=False).alias("tgid"),
        pick("cpu", stamp("cpu")).cast(pl.Int32, strict=False).alias("cpu"),
        pick("flags", stamp("flags")).alias("flags"),
        pick("ts", stamp("ts")).alias("ts_text"),
        pick("body", col("__body")).alias("__body"),
    )
    frame = frame.with_columns(col("__body").str.find(": ", literal=True).alias("__split"))
    body = col("__body")
    no_fields = col("__split").is_null()
    is_function = no_fields & body.str.contains(FUNCTION_RE)
    bare = no_fields & body.str.ends_with(":")  # an event with no fields
    event = (pl.when(is_function).then(pl.lit("function"))
             .when(bare).then(body.str.strip_suffix(":"))
             .when(no_fields).then(body)
             .otherwise(body.str.slice(0, col("__split"))))
    raw = (pl.when(is_function).then(body).when(no_fields).then(pl.lit(""))
           .otherwise(body.str.slice(col("__split") + 2)))
    if strip_event_padding:
        raw = raw.str.strip_chars_start()
    frame = frame.with_columns(event.alias("event"),
                               pl.when(body.is_not_null()).then(raw).alias("raw"))
    return frame.drop("__pos", "__many", "__head", "__tail", "__slow", "__dash", "__colon",
                      "__comm", "__ids", "__stamp", "__body", "__split")


def classify(text: pl.Expr, task_re: str = TASK_LINE_RE) -> pl.Expr:
    """What each line is: event, lost, comment, blank, stack (continuation), or bad."""
    is_event = text.str.contains(task_re) & ~text.str.starts_with("#")
    # every branch of a when-chain runs on every row: the other tests see only the rest
    other = pl.when(~is_event).then(text)
    return (pl.when(is_event).then(pl.lit("event"))
            .when(other.is_null() | (other.str.strip_chars() == "")).then(pl.lit("blank"))
            .when(other.str.starts_with("#")).then(pl.lit("comment"))
            .when(other.str.contains(text_lines.LOST_RE)).then(pl.lit("lost"))
            .when(other.str.contains(text_lines.STACK_RE)).then(pl.lit("stack"))
            .otherwise(pl.lit("bad")))


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


def finish(path: Path, lines: pl.LazyFrame, kind: pl.Expr, columns, *, source: str,
           what: str, system: pl.Expr | None = None, event_frame=normalise_events):
    """Run the line pipeline once: (events conformed or None, errors, meta).

    `kind` classifies each line (see :func:`classify`); `columns(frame, text)` splits the
    event lines of column `text` into comm, pid, tgid, cpu, flags, ts_text, event and raw.
    """
    truncated = text_lines.last_line_truncated(path)
    text = pl.col("text")
    is_lost = pl.col("kind") == "lost"
    lost_groups = pl.when(is_lost).then(text).str.extract_groups(text_lines.LOST_RE)
    table = (
        lines.with_columns(kind.alias("kind"))
        .filter(pl.col("line") != (truncated or 0))
        .with_columns(pl.when(pl.col("kind") == "event").then(text).alias("etext"))
        .pipe(columns, "etext")
        .with_columns(
            pl.when(is_lost).then(lost_groups.struct[0].cast(pl.Int32, strict=False))
            .otherwise(pl.col("cpu")).alias("cpu"),
            pl.when(is_lost).then(pl.coalesce(lost_groups.struct[1], lost_groups.struct[2])
                                  .cast(pl.Int64, strict=False)).alias("lost"),
            pl.when(is_lost).then(pl.lit(LOST_EVENTS)).otherwise(pl.col("event")).alias("event"),
            pl.when(is_lost).then(text.str.strip_chars()).otherwise(pl.col("raw")).alias("raw"),
        )
    )
    # an event line whose parts did not all parse is bad too
    parsed_ok = (pl.col("pid").is_not_null() & pl.col("cpu").is_not_null()
                 & pl.col("event").is_not_null() & pl.col("ts_text").is_not_null())
    table = table.with_columns(
        pl.when((pl.col("kind") == "event") & ~parsed_ok).then(pl.lit("bad"))
        .otherwise(pl.col("kind")).alias("kind"))
    table = table.with_columns(
        pl.when(pl.col("kind").is_in(["bad", "stack"])).then(text).alias("text"))
    collected = table.drop("etext").collect(engine="streaming")
    kinds = collected.get_column("kind")
    bad = collected.filter(pl.col("kind") == "bad").select("line", "text")
    stack_lines = int((kinds == "stack").sum())
    if stack_lines:
        collected = _attach_stacks(collected)
    events = _event_rows(collected).drop("text", "kind")
    del collected
    meta = {
        "precision": text_lines.precision_of(events),
        "lost_events": int(events.get_column("lost").sum() or 0),
    }
    if stack_lines:
        meta["stack_lines"] = stack_lines
    errors = text_lines.line_errors(path, bad, what)
    if truncated is not None:
        errors.append(text_lines.truncated_error(path, truncated))
    nul = text_lines.nul_line(path)
    if nul is not None:
        errors.append(InputError("binary data (a NUL byte) in a text trace: the line is cut "
                                 "there", path=str(path), line=nul))
    if events.height == 0:
        if not errors:
            errors.append(InputError(f"no {what} events", path=str(path)))
        return None, errors, meta
    lazy = events.lazy().with_columns(
        text_lines.timestamp_ns(pl.col("ts_text")).alias("ts_ns"),
        pl.int_range(pl.len(), dtype=pl.Int64).alias("seq"),
        pl.lit(source).alias("source"),
        pl.lit(str(path)).alias("file"),
    )
    lazy = event_frame(lazy)
    lazy = lazy.with_columns((system if system is not None
                              else fieldtable.system_of(pl.col("event"))).alias("system"))
    sample = event_frame(fieldtable.field_sample(events.select("event", "raw")).lazy())
    lazy = fieldtable.field_columns(lazy, sample=sample.collect()).drop("ts_text")
    return conform(lazy).collect(engine="streaming"), errors, meta


def _event_rows(lines: pl.DataFrame) -> pl.DataFrame:
    """The event and lost-events rows. Usually only a header precedes them: then a slice,
    which shares the columns' memory, instead of a filtered copy."""
    keep = lines.get_column("kind").is_in(["event", "lost"])
    first = keep.arg_true()
    if first.len() and first.len() == lines.height - first[0]:
        return lines.slice(first[0])
    return lines.filter(keep)


def _attach_stacks(lines: pl.DataFrame) -> pl.DataFrame:
    """Stack trace lines (`` => func+0x14/0xbc``, perf callchains) go, joined by newlines,
    into the ``stack`` column of the event line above them."""
    owner = (pl.col("kind").is_in(["event", "lost"])).cum_sum().alias("__owner")
    lines = lines.with_columns(owner)
    stacks = (lines.filter(pl.col("kind") == "stack")
              .group_by("__owner", maintain_order=True)
              .agg(pl.col("text").str.strip_chars().str.join("\n").alias("stack")))
    return lines.join(stacks, on="__owner", how="left").drop("__owner")


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


def parse(path: Path) -> Parsed:
    path = Path(path)
    head = read_head(path)
    events, errors, meta = finish(path, text_lines.scan_lines(path), classify(pl.col("text")),
                                  task_columns, source="ftrace", what="tracefs trace")
    meta.update(read_header(head))
    if events is None:
        return Parsed(path=str(path), format=NAME, errors=errors, meta={})
    return Parsed(path=str(path), format=NAME, events=events, errors=errors, meta=meta)
