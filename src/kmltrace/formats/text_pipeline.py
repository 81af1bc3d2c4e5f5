"""The line pipeline shared by the text trace parsers (tracefs text, trace-cmd report, perf
script): lines -> split -> classify -> events, errors, meta, in whole-column expressions.

A :class:`Grammar` says how one format's lines split:

``split(frame, text)``  adds ``comm pid tgid cpu flags ts_sec ts_frac __body __many`` for every
                        line, by positions and slices (fast; null where a line does not fit);
``exact(frame, text)``  the same with one capturing regex, run only on the rare lines the fast
                        split may cut wrongly (``__many``: several ``[digits]`` in the line);
``body(frame)``         turns ``__body`` into ``event`` and ``raw`` (and any extra column).

A line whose pid, cpu and timestamp parse is an event; the others are classified (lost
events, stack lines, blank, comment) and what is left is reported as a bad line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import polars as pl

from kmltrace.errors import InputError
from kmltrace.formats import fields as fieldtable
from kmltrace.formats import text_lines
from kmltrace.schema import LOST_EVENTS, conform

Step = Callable[..., pl.LazyFrame]
SPLIT_COLUMNS = ("comm", "pid", "tgid", "cpu", "flags", "ts_sec", "ts_frac", "__body")


@dataclass(frozen=True)
class Grammar:
    what: str                   # "tracefs trace", for error messages
    source: str                 # the rows' source column: ftrace, perf
    split: Step
    exact: Step
    body: Step
    #: the event's system; None: looked up from the event name (tracefs prints none)
    system: pl.Expr | None = None
    #: lines that are not events: an extra header grammar (trace-cmd's "cpus=2")
    header_re: str | None = None
    #: continuation lines that belong to the event above (stack traces, callchains)
    stack_re: str = text_lines.STACK_RE


def run(path: Path, lines: pl.LazyFrame, grammar: Grammar, *, event_frame=None):
    """Parse `lines` of the file at `path`: (events conformed or None, errors, meta)."""
    truncated = text_lines.last_line_truncated(path)
    text = pl.col("text")
    table = (lines.filter(pl.col("line") != (truncated or 0))
             .pipe(grammar.split, "text"))
    parsed = (pl.col("pid").is_not_null() & pl.col("cpu").is_not_null()
              & pl.col("ts_sec").is_not_null() & pl.col("__body").is_not_null())
    table = table.with_columns(
        _kind(text, parsed, grammar.header_re, grammar.stack_re).alias("kind"))
    is_lost = pl.col("kind") == "lost"
    lost = pl.when(is_lost).then(text).str.extract_groups(text_lines.LOST_RE)
    table = table.with_columns(
        pl.when(is_lost).then(lost.struct[0].cast(pl.Int32, strict=False))
        .otherwise(pl.col("cpu")).alias("cpu"),
        pl.when(is_lost).then(pl.coalesce(lost.struct[1], lost.struct[2])
                              .cast(pl.Int64, strict=False)).alias("lost"),
        pl.when(is_lost).then(text.str.strip_chars()).otherwise(pl.col("__body")).alias("__body"),
        # the line text is kept only where it is still needed
        pl.when(pl.col("kind").is_in(["bad", "stack"]) | pl.col("__many")).then(text)
        .alias("text"),
    )
    try:
        collected = table.collect(engine="streaming")
    except (pl.exceptions.PolarsError, OSError) as e:
        # polars' reader refuses it (it also takes zstd/gzip magic for a compressed file)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"cannot read as text lines: {first}", path=str(path)) from None
    if collected.get_column("__many").any():
        collected = _exact(collected, grammar)
    kinds = collected.get_column("kind")
    bad = collected.filter(pl.col("kind") == "bad").select("line", "text")
    stack_lines = int((kinds == "stack").sum())
    if stack_lines:
        collected = _attach_stacks(collected)
    events = _event_rows(collected).drop("text", "kind", "__many")
    del collected

    meta = {"precision": _precision(events),
            "lost_events": int(events.get_column("lost").sum() or 0)}
    if stack_lines:
        meta["stack_lines"] = stack_lines
    errors = text_lines.line_errors(path, bad, grammar.what)
    if truncated is not None:
        errors.append(text_lines.truncated_error(path, truncated))
    nul = text_lines.nul_line(path)
    if nul is not None:
        errors.append(InputError("binary data (a NUL byte) in a text trace: the line is cut "
                                 "there", path=str(path), line=nul))
    if events.height == 0:
        if not errors:
            errors.append(InputError(f"no {grammar.what} events", path=str(path)))
        return None, errors, meta

    lost_row = pl.col("lost").is_not_null()
    frame = events.lazy().pipe(grammar.body).with_columns(
        pl.when(lost_row).then(pl.lit(LOST_EVENTS)).otherwise(pl.col("event")).alias("event"),
        pl.when(lost_row).then(pl.col("__body")).otherwise(pl.col("raw")).alias("raw"),
        _timestamp_ns().alias("ts_ns"),
        pl.int_range(pl.len(), dtype=pl.Int64).alias("seq"),
        pl.lit(grammar.source).alias("source"),
        pl.lit(str(path)).alias("file"),
    ).drop("__body", "ts_sec", "ts_frac")
    if event_frame is not None:
        frame = event_frame(frame)
    system = grammar.system if grammar.system is not None else fieldtable.system_of(pl.col("event"))
    table = frame.with_columns(system.alias("system")).collect()
    del events
    # which field-table entries fit: judged on a few rows of each event
    sample = fieldtable.field_sample(table.select("event", "raw"))
    return (conform(fieldtable.field_columns(table.lazy(), sample=sample)).collect(),
            errors, meta)


def _kind(text: pl.Expr, parsed: pl.Expr, header_re: str | None, stack_re: str) -> pl.Expr:
    """event, lost, stack, blank, comment or bad; the tests beyond `parsed` see only the rest
    (every branch of a when-chain runs on every row, a null costs next to nothing)."""
    is_event = parsed & ~text.str.starts_with("#")
    rest = pl.when(~is_event).then(text)
    comment = rest.str.starts_with("#")
    if header_re is not None:
        comment = comment | rest.str.strip_chars().str.contains(header_re)
    return (pl.when(is_event).then(pl.lit("event"))
            .when(rest.is_null() | (rest.str.strip_chars() == "")).then(pl.lit("blank"))
            .when(comment).then(pl.lit("comment"))
            .when(rest.str.contains(text_lines.LOST_RE)).then(pl.lit("lost"))
            .when(rest.str.contains(stack_re)).then(pl.lit("stack"))
            .otherwise(pl.lit("bad")))


def _exact(lines: pl.DataFrame, grammar: Grammar) -> pl.DataFrame:
    """Re-split the lines flagged ``__many`` with the exact (capturing) grammar."""
    subset = lines.filter(pl.col("__many")).select("line", "text")
    exact = (subset.lazy().pipe(grammar.exact, "text")
             .select("line", *SPLIT_COLUMNS).collect())
    fixed = exact.filter(pl.col("pid").is_not_null()).with_columns(kind=pl.lit("event"))
    if fixed.height == 0:
        return lines
    return lines.update(fixed, on="line", include_nulls=True)


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


def _timestamp_ns() -> pl.Expr:
    """seconds and fraction parsed apart, exactly (no float); no fraction: a counter clock."""
    sec = pl.col("ts_sec").cast(pl.Int64, strict=False)
    frac = pl.col("ts_frac")
    frac_ns = frac.str.slice(0, 9).str.pad_end(9, "0").cast(pl.Int64, strict=False)
    return pl.when(frac.is_null()).then(sec).otherwise(sec * 1_000_000_000 + frac_ns)


def _precision(events: pl.DataFrame) -> str:
    """ "us" or "ns" from the fraction digits the source printed ("counter": none)."""
    if events.height == 0:
        return "us"
    digits = events.select(pl.col("ts_frac").str.len_bytes().max()).item()
    if digits is None:
        return "counter"
    return "ns" if digits > 6 else "us"
