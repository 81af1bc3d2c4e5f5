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
from kmltrace.formats import text_lines, text_scan
from kmltrace.formats.sniff import read_head
from kmltrace.schema import (COMMON_COLUMNS, CORE_COLUMNS, LOST_EVENTS, PROVENANCE_COLUMNS,
                             conform)

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
    #: the C scanner's grammar for these lines (text_scan.py), None: polars only
    scanner: str | None = None
    #: events whose lines the scanner leaves to the pipeline (``event_frame`` renames them)
    scan_deferred: tuple[str, ...] = ()


class TextParse:
    """One text trace parsed batch by batch (bounded memory): iterate :meth:`batches` for the
    event frames (conformed; ``seq`` and ``line`` count across batches), then read ``errors``
    and ``meta``, which are complete once the batches are exhausted.

    A batch ends before its last event line: that line and any lines after it (a stack trace
    that may continue in the next read) go on to the next batch.
    """

    def __init__(self, path: Path, grammar: Grammar, *, event_frame: Step | None = None,
                 lines_frame: Step | None = None, events_done: Callable | None = None,
                 batch_bytes: int | None = None, whole: bool = False):
        self.path = Path(path)
        self.grammar = grammar
        self.event_frame = event_frame
        self.lines_frame = lines_frame      # applied to each batch of lines (trace-cmd prefixes)
        self.events_done = events_done      # applied to each batch of events
        self.batch_bytes = batch_bytes or text_lines.BATCH_BYTES
        self._piece_bytes = batch_bytes     # the scanner's pieces: text_scan.SCAN_BYTES unless set
        # whole: one batch, read and split by one streaming query (no line batches kept)
        self.whole = whole
        self.errors: list = []
        self.meta: dict = {}
        self.header_meta: dict = {}         # what the file's header says (added to meta)
        self.events = 0
        self._bad: list[pl.DataFrame] = []
        self._bad_count = 0
        self._lost = 0
        self._stack_lines = 0
        self._frac_digits: int | None = None

    #: bytes cut off the start of lines before they are split (trace-cmd's buffer names)
    def scan_prefixes(self) -> tuple[bytes, ...]:
        return ()

    def batches(self):
        module = text_scan.scanner() if self.grammar.scanner else None
        # the scanner maps the file: a pipe or a device is read by the pure path
        if (module is not None and self.path.is_file()
                and not text_scan.looks_compressed(read_head(self.path, 4))):
            yield from self._scanned_batches(module)
            return
        yield from self._line_batches()

    def _scanned_batches(self, module):
        """The batches, with the C scanner taking the lines it is sure of (text_scan.py).
        The next piece is scanned in a worker thread while this one becomes a table."""
        path, grammar = self.path, self.grammar
        how = text_scan.setup(module, grammar.scanner, grammar.scan_deferred)
        # a whole parse keeps every batch anyway: bigger pieces, fewer per-piece costs
        size = self._piece_bytes or (text_scan.WHOLE_SCAN_BYTES if self.whole
                                     else text_scan.SCAN_BYTES)
        truncated = nul = None
        try:
            pieces = text_scan.Pieces(path, size)
        except OSError as e:
            raise InputError(f"cannot read: {e.strerror or e}", path=str(path)) from None
        try:
            start, first_line = 0, 1
            end = pieces.end_of_piece(start) if pieces.length else 0
            future = (pieces.submit(text_scan.scan, start, end, module, first_line, how,
                                    self.scan_prefixes()) if end else None)
            while future is not None:
                scanned = future.result()
                future = None
                fast, deferred = scanned.fast, scanned.deferred
                if scanned.first_nul is not None:
                    nul = scanned.first_nul if nul is None else min(nul, scanned.first_nul)
                last = end >= pieces.length
                if last and not pieces.ends_with_newline:
                    truncated = first_line + scanned.lines - 1
                    fast = fast.filter(pl.col("line") != truncated)
                    deferred = deferred.filter(pl.col("line") != truncated)
                slow = None
                if not last:
                    # the last event line and what follows it wait for the next piece
                    if fast.height:
                        at_line, at = fast.row(-1)[:2]
                    else:       # no line taken (rare): the pipeline finds the last event
                        slow = self._classified_lines(deferred)
                        owners = (slow.filter(pl.col("kind").is_in(["event", "lost"]))
                                  if slow is not None else deferred.clear())
                        at_line, at = owners.row(-1)[:2] if owners.height else (None, None)
                    if at_line is None:         # no event yet: a bigger piece
                        next_start, next_end, next_line = start, pieces.end_of_piece(end), first_line
                        fast = fast.clear()
                        deferred = deferred.clear()
                        slow = None
                    else:
                        next_start, next_line = start + at, at_line
                        # an event on the piece's first line only: the next piece reads on
                        next_end = pieces.end_of_piece(end if at == 0 else next_start)
                        fast = fast.filter(pl.col("line") < at_line)
                        deferred = deferred.filter(pl.col("line") < at_line)
                        if slow is not None:
                            slow = slow.filter(pl.col("line") < at_line)
                    future = pieces.submit(text_scan.scan, next_start, next_end, module,
                                           next_line, how, self.scan_prefixes())
                if slow is None:
                    slow = self._classified_lines(deferred)   # None when there are none
                frame = self._scanned_events(fast, slow, scanned.frac_digits)
                del fast, deferred, slow, scanned
                if not last:
                    pieces.release(start, next_start)
                    start, end, first_line = next_start, next_end, next_line
                if frame is not None:
                    yield frame
        except (pl.exceptions.PolarsError, OSError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InputError(f"cannot read as text lines: {first}", path=str(path)) from None
        finally:
            pieces.close()
        self._finish(truncated, nul=nul)

    def _classified_lines(self, lines: pl.DataFrame) -> pl.DataFrame | None:
        """The lines the scanner left, split and classified by the polars grammar (None:
        there are none, as in most pieces)."""
        if lines.height == 0:
            return None
        frame = lines.lazy()
        if self.lines_frame is not None:
            frame = self.lines_frame(frame)
        collected = _classified(frame, self.grammar).collect()
        if collected.get_column("__many").any():
            collected = _exact(collected, self.grammar)
        return collected

    def _scanned_events(self, fast: pl.DataFrame, slow: pl.DataFrame, frac_digits):
        """The table of one scanned piece: the scanner's rows (their event names need no
        event_frame: the scanner leaves those names to the pipeline; the scanner gives their
        system) and the pipeline's, in line order."""
        events = self._slow_events(slow, keep_empty=True) if slow is not None else None
        fast = fast.drop("__offset")
        if frac_digits is not None and fast.height:
            self._frac_digits = max(frac_digits, self._frac_digits or 0)
        if (events is None or events.height == 0) and fast.height == 0:
            return None
        if events is not None and events.height == 0 and "stack" not in events.columns:
            events = None
        if events is None:
            table = fast.with_columns(pl.lit(None, dtype=pl.Int64).alias("lost"))
        else:
            rows = self._bodies(events.drop("__offset").lazy())
            if self.event_frame is not None:
                rows = self.event_frame(rows)
            rows = rows.with_columns(self._system().alias("system")).collect()
            if "perf_system" in rows.columns:
                rows = rows.drop("perf_system")
            table = (pl.concat([fast, rows], how="diagonal_relaxed")
                     .with_columns(pl.col(fieldtable.DECODED).fill_null(False)))
            if fast.height:
                table = table.sort("line")
        table = table.with_columns(
            pl.int_range(self.events, self.events + pl.len(), dtype=pl.Int64).alias("seq"),
            pl.lit(self.grammar.source).alias("source"),
            pl.lit(str(self.path)).alias("file"))
        sample = fieldtable.field_sample(table.select("event", "raw"))
        frame = conform(fieldtable.scanned_field_columns(table, sample))
        if self.events_done is not None:
            frame = self.events_done(frame)
        self.events += frame.height
        return frame

    def _system(self) -> pl.Expr:
        return (self.grammar.system if self.grammar.system is not None
                else fieldtable.system_of(pl.col("event")))

    def _slow_events(self, collected: pl.DataFrame,
                     keep_empty: bool = False) -> pl.DataFrame | None:
        """The event rows of classified lines (bad lines reported, stack lines attached);
        None when there are none, or (`keep_empty`) an empty frame that still carries the
        ``stack`` column of stack lines no event line owns, as a whole batch's table does."""
        kinds = collected.get_column("kind")
        bad = collected.filter(pl.col("kind") == "bad").select("line", "text")
        if bad.height:
            self._bad_count += bad.height
            if sum(b.height for b in self._bad) <= text_lines.ERRORS_SHOWN:
                self._bad.append(bad.head(text_lines.ERRORS_SHOWN + 1))
        stack_lines = int((kinds == "stack").sum())
        if stack_lines:
            self._stack_lines += stack_lines
            collected = _attach_stacks(collected)
        events = _event_rows(collected).drop("text", "kind", "__many")
        if events.height == 0:
            return events if keep_empty else None
        self._lost += int(events.get_column("lost").sum() or 0)
        digits = events.select(pl.col("ts_frac").str.len_bytes().max()).item()
        if digits is not None:
            self._frac_digits = max(digits, self._frac_digits or 0)
        return events

    def _line_batches(self):
        path = self.path
        truncated = text_lines.last_line_truncated(path)
        carry: pl.DataFrame | None = None
        reader = text_lines.read_batches(path, self.batch_bytes)
        try:
            if self.whole:
                lines = text_lines.scan_lines(path)
                if truncated is not None:
                    lines = lines.filter(pl.col("line") != truncated)
                frame, _ = self._lines_to_events(lines, last=True)
                if frame is not None:
                    yield frame
                reader = iter(())
            batch = next(reader, None)
            while batch is not None:
                following = next(reader, None)
                if carry is not None:
                    batch = pl.concat([carry, batch])
                    carry = None
                if truncated is not None:
                    batch = batch.filter(pl.col("line") != truncated)
                frame, carry = self._lines_to_events(batch.lazy(), last=following is None,
                                                     batch=batch)
                del batch
                if frame is not None:
                    yield frame
                batch = following
        except (pl.exceptions.PolarsError, OSError) as e:
            # polars' reader refuses it (it also takes zstd/gzip magic for a compressed file)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InputError(f"cannot read as text lines: {first}", path=str(path)) from None
        self._finish(truncated)

    def _lines_to_events(self, lines: pl.LazyFrame, last: bool, batch: pl.DataFrame | None = None):
        """(events of `lines` or None, lines of `batch` carried to the next batch or None)."""
        grammar = self.grammar
        if self.lines_frame is not None:
            lines = self.lines_frame(lines)
        # streaming: the whole file never materialises every intermediate column at once
        engine = "streaming" if self.whole else "auto"
        collected = _classified(lines, grammar).collect(engine=engine)
        if collected.get_column("__many").any():
            collected = _exact(collected, grammar)
        carry = None
        kinds = collected.get_column("kind")
        if not last:
            # the last event line and what follows it wait for the next batch
            owners = kinds.is_in(["event", "lost"]).arg_true()
            at = owners[-1] if owners.len() else 0
            carry = batch.slice(at)
            collected = collected.slice(0, at)
        events = self._slow_events(collected)
        del collected
        if events is None:
            return None, carry
        # the lazy frame is the only reference left: freed once _table has collected it
        lazy = self._bodies(events.lazy())
        del events
        frame = self._table(lazy)
        self.events += frame.height
        return frame, carry

    def _bodies(self, events: pl.LazyFrame) -> pl.LazyFrame:
        """Split lines' bodies -> event, raw, ts_ns (lost-event lines named so)."""
        lost_row = pl.col("lost").is_not_null()
        return events.pipe(self.grammar.body).with_columns(
            pl.when(lost_row).then(pl.lit(LOST_EVENTS)).otherwise(pl.col("event")).alias("event"),
            pl.when(lost_row).then(pl.col("__body")).otherwise(pl.col("raw")).alias("raw"),
            _timestamp_ns().alias("ts_ns"),
        ).drop("__body", "ts_sec", "ts_frac")

    def _table(self, events: pl.LazyFrame) -> pl.DataFrame:
        """Rows with event, raw and ts_ns -> the conformed event table of the batch."""
        grammar = self.grammar
        frame = events.with_columns(
            pl.int_range(self.events, self.events + pl.len(), dtype=pl.Int64).alias("seq"),
            pl.lit(grammar.source).alias("source"),
            pl.lit(str(self.path)).alias("file"),
        )
        if self.event_frame is not None:
            frame = self.event_frame(frame)
        table = frame.with_columns(self._system().alias("system")).collect()
        del events, frame
        # which field-table entries fit: judged on a few rows of each event
        sample = fieldtable.field_sample(table.select("event", "raw"))
        table = conform(fieldtable.field_columns(table.lazy(), sample=sample)).collect()
        if self.events_done is not None:
            table = self.events_done(table)
        return table

    def _finish(self, truncated: int | None, nul=text_lines.UNKNOWN) -> None:
        path, grammar = self.path, self.grammar
        meta = {"precision": ("us" if self.events == 0 else "counter"
                              if self._frac_digits is None
                              else "ns" if self._frac_digits > 6 else "us"),
                "lost_events": self._lost}
        if self._stack_lines:
            meta["stack_lines"] = self._stack_lines
        meta.update(self.header_meta)
        bad = (pl.concat(self._bad) if self._bad
               else pl.DataFrame(schema={"line": pl.Int64, "text": pl.String}))
        errors = text_lines.line_errors(path, bad, grammar.what, total=self._bad_count)
        if truncated is not None:
            errors.append(text_lines.truncated_error(path, truncated))
        if nul is text_lines.UNKNOWN:
            nul = text_lines.nul_line(path)
        if nul is not None:
            errors.append(InputError("binary data (a NUL byte) in a text trace: the line is cut "
                                     "there", path=str(path), line=nul))
        if self.events == 0 and not errors:
            errors.append(InputError(f"no {grammar.what} events", path=str(path)))
        self.errors, self.meta = errors, meta


def run(path: Path, grammar: Grammar, **options):
    """Parse the text trace at `path` whole: (events conformed or None, errors, meta)."""
    options.setdefault("whole", True)
    parse = TextParse(path, grammar, **options)
    frames = list(parse.batches())
    if not frames:
        return None, parse.errors, parse.meta
    events = frames[0] if len(frames) == 1 else pl.concat(frames, how="diagonal_relaxed")
    del frames
    return in_column_order(events), parse.errors, parse.meta


def in_column_order(frame):
    """`frame` (conformed batches) with its field columns in the field table's order,
    whatever batch brought them first (a batch-by-batch parse gives a whole one's columns).
    Only a selection: a cast of a whole table, even to its own dtypes, copies it."""
    names = (frame.collect_schema().names() if isinstance(frame, pl.LazyFrame)
             else frame.columns)
    rank = _field_rank()
    extra = [n for n in names if n not in rank]
    fields = sorted((n for n in names if n in rank), key=rank.__getitem__)
    if extra + fields == names:
        return frame
    if isinstance(frame, pl.LazyFrame):
        return frame.select(*extra, *fields)
    # a DataFrame's select runs through the query engine, which copied the table here
    return pl.DataFrame([frame.get_column(n) for n in extra + fields])


def _field_rank() -> dict[str, int]:
    """Field columns in the order fields.field_columns adds them (table entry by entry)."""
    rank: dict[str, int] = {}
    for spec in fieldtable.EVENT_FIELDS:
        for name, kind in spec.kinds.items():
            rank.setdefault(name, len(rank))
            if kind == "ps":
                rank.setdefault(name + fieldtable.SYM_SUFFIX, len(rank))
    for name in (*CORE_COLUMNS, *PROVENANCE_COLUMNS, *COMMON_COLUMNS):
        rank.pop(name, None)     # conform places these
    return rank


def _classified(lines: pl.LazyFrame, grammar: Grammar) -> pl.LazyFrame:
    """Lines split and classified (``kind``), lost-event lines read."""
    text = pl.col("text")
    table = lines.pipe(grammar.split, "text")
    parsed = (pl.col("pid").is_not_null() & pl.col("cpu").is_not_null()
              & pl.col("ts_sec").is_not_null() & pl.col("__body").is_not_null())
    table = table.with_columns(
        _kind(text, parsed, grammar.header_re, grammar.stack_re).alias("kind"))
    is_lost = pl.col("kind") == "lost"
    lost = pl.when(is_lost).then(text).str.extract_groups(text_lines.LOST_RE)
    return table.with_columns(
        pl.when(is_lost).then(lost.struct[0].cast(pl.Int32, strict=False))
        .otherwise(pl.col("cpu")).alias("cpu"),
        pl.when(is_lost).then(pl.coalesce(lost.struct[1], lost.struct[2])
                              .cast(pl.Int64, strict=False)).alias("lost"),
        pl.when(is_lost).then(text.str.strip_chars()).otherwise(pl.col("__body")).alias("__body"),
        # the line text is kept only where it is still needed
        pl.when(pl.col("kind").is_in(["bad", "stack"]) | pl.col("__many")).then(text)
        .alias("text"),
    )


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
