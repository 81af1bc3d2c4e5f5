"""Per-process sequences: page faults (count, rate, class, repeats, stack growth), the
exceptions and interrupts taken while the process was on the CPU, syscalls by number, signals.

A fault's class comes from the process's memory map (``processes.json`` of a bundle: the
collector's copy of /proc/PID/maps) or a snapshot's stack VMA and saved sp:
``stack`` (the [stack] VMA, or near the saved sp), ``heap`` ([heap] or anonymous),
``file`` (file-backed), ``kernel`` (an upper-half address), ``other`` ([vdso]...),
``unknown`` (no map for it).
"""

from __future__ import annotations

import polars as pl

from kmltrace.analysis.kernel import USER_TOP
from kmltrace.schema import EXCEPTION, PAGE_FAULT_EVENTS, PF_VECTOR, SYS_ENTER

PAGE = 4096
#: a snapshot's saved sp marks the stack when no map is known: this far below it
NEAR_SP_BELOW = 256 * 1024
NEAR_SP_ABOVE = 64 * 1024
FAULT_CLASSES = ("stack", "heap", "file", "kernel", "other", "unknown")
#: the window over which the peak fault rate is measured
PEAK_WINDOW_NS = 10_000_000
INTERRUPT_SYSTEMS = ("irq_vectors", "irq")
SIGNAL_EVENTS = ("signal_generate", "signal_deliver")
#: what fault and delivery analyses read (selected first: a large table stays on disk)
DELIVERY_COLUMNS = ["row", "ts_ns", "cpu", "task_pid", "task_comm", "image", "source", "file",
                    "line", "system", "event", "vector", "ip", "address", "cr2", "error_code",
                    "rsp", "cpl"]


def is_fault() -> pl.Expr:
    """Page faults from any source: tracepoints or #PF exception records (QEMU, console)."""
    return (pl.col("event").is_in(list(PAGE_FAULT_EVENTS))
            | ((pl.col("event") == EXCEPTION) & (pl.col("vector") == PF_VECTOR)))


def fault_address() -> pl.Expr:
    return pl.coalesce("address", "cr2")


def _klass_of_path(path: str | None, perms: str | None) -> str:
    if path == "[stack]" or (path or "").startswith("[stack:"):
        return "stack"
    if not path or path == "[heap]":
        return "heap"
    if path.startswith("/"):
        return "file"
    return "other"


def memory_ranges(capture) -> pl.DataFrame:
    """(pid, start, end, klass) from processes.json maps and snapshot stacks."""
    rows = []
    for proc in capture.processes:
        if not isinstance(proc, dict) or not isinstance(proc.get("pid"), int):
            continue
        for m in proc.get("maps") or []:
            try:
                start, end = int(str(m["start"]), 16), int(str(m["end"]), 16)
            except (KeyError, ValueError, TypeError):
                continue
            rows.append((proc["pid"], start, end, _klass_of_path(m.get("path"), m.get("perms"))))
    for snap in capture.metas("snapshot"):
        for task in (snap.get("tasks") or []) if isinstance(snap, dict) else []:
            pid = task.get("pid") if isinstance(task, dict) else None
            if not isinstance(pid, int):
                continue
            vma = task.get("stack_vma")
            if isinstance(vma, list) and len(vma) == 2:
                rows.append((pid, _int(vma[0]), _int(vma[1]), "stack"))
            elif task.get("sp") is not None:
                sp = _int(task["sp"])
                if sp is not None and sp < USER_TOP:
                    rows.append((pid, max(sp - NEAR_SP_BELOW, 0), sp + NEAR_SP_ABOVE, "stack"))
    schema = {"pid": pl.Int32, "start": pl.UInt64, "end": pl.UInt64, "klass": pl.String}
    rows = [r for r in rows if r[1] is not None and r[2] is not None]
    return pl.DataFrame(rows, schema=schema, orient="row")


def _int(value):
    try:
        return value if isinstance(value, int) else int(str(value), 0)
    except (TypeError, ValueError):
        return None


def classified_faults(ctx) -> pl.LazyFrame:
    """Every page fault with ``fault_address``, ``page`` and ``klass`` (see module doc)."""
    faults = (ctx.events.select(DELIVERY_COLUMNS).filter(is_fault())
              .with_columns(fault_address().alias("fault_address"))
              .with_columns((pl.col("fault_address") // PAGE).alias("page")))
    ranges = memory_ranges(ctx.capture)
    if ranges.height:
        located = (faults.filter(pl.col("fault_address").is_not_null()).sort("fault_address")
                   .join_asof(ranges.lazy().sort("start"), left_on="fault_address",
                              right_on="start", by_left="task_pid", by_right="pid",
                              strategy="backward", check_sortedness=False)
                   .with_columns(pl.when(pl.col("fault_address") < pl.col("end"))
                                 .then(pl.col("klass")).alias("klass"))
                   .drop("start", "end"))
        faults = pl.concat([located, faults.filter(pl.col("fault_address").is_null())
                            .with_columns(pl.lit(None, dtype=pl.String).alias("klass"))],
                           how="diagonal_relaxed").sort("row")
    else:
        faults = faults.with_columns(pl.lit(None, dtype=pl.String).alias("klass"))
    return faults.with_columns(
        pl.when(pl.col("fault_address") >= USER_TOP).then(pl.lit("kernel"))
        .otherwise(pl.col("klass").fill_null("unknown")).alias("klass"))


def fault_summary(ctx, faults: pl.LazyFrame | None = None) -> pl.DataFrame:
    """One row per (pid, image): counts by class, rate, peak rate, repeats, stack growth."""
    if faults is None:
        faults = classified_faults(ctx)
    stack = pl.col("klass") == "stack"
    per_fault = faults.with_columns(
        pl.when(stack).then(pl.col("page")).alias("_stack_page"),
    ).with_columns(
        # first touch of a new lowest stack page (the first stack fault counts): the stack grew
        (stack & (pl.col("_stack_page") < pl.col("_stack_page").cum_min().forward_fill()
                  .shift(1).over(["task_pid", "image"], order_by="row")).fill_null(True))
        .alias("_growth"),
        (pl.col("ts_ns") // PEAK_WINDOW_NS).alias("_window"),
    )
    summary = per_fault.group_by("task_pid", "image").agg(
        pl.len().alias("faults"),
        *[(pl.col("klass") == k).sum().alias(f"faults_{k}") for k in FAULT_CLASSES],
        pl.col("ts_ns").min().alias("_t0"), pl.col("ts_ns").max().alias("_t1"),
        pl.col("_growth").sum().alias("stack_growth"),
    )
    repeats = (per_fault.filter(pl.col("fault_address").is_not_null())
               .group_by("task_pid", "image", "fault_address").agg(pl.len().alias("_n"))
               .group_by("task_pid", "image").agg(
                   (pl.col("_n") > 1).sum().alias("repeated_addresses"),
                   pl.col("_n").max().alias("max_repeats_at_one_address")))
    peaks = (per_fault.filter(pl.col("_window").is_not_null())
             .group_by("task_pid", "image", "_window").agg(pl.len().alias("_n"))
             .group_by("task_pid", "image").agg(pl.col("_n").max().alias("_peak")))
    out = (summary.join(repeats, on=["task_pid", "image"], how="left")
           .join(peaks, on=["task_pid", "image"], how="left")
           .with_columns(
               pl.when(pl.col("_t1") > pl.col("_t0"))
               .then(pl.col("faults") / ((pl.col("_t1") - pl.col("_t0")) / 1e9))
               .alias("rate_per_s"),
               (pl.col("_peak") * (1e9 / PEAK_WINDOW_NS)).alias("peak_per_s"))
           .drop("_t0", "_t1", "_peak")
           .rename({"task_pid": "pid"}))
    return out.collect()


def activity_counts(ctx) -> dict[tuple, dict]:
    """{(pid, image): {"syscalls_by_id": {...}, "interrupts": {...}, "signals": {...}}}."""
    events = ctx.events
    out: dict[tuple, dict] = {}

    # ties sorted by name: the JSON must not depend on the engine's group order
    def fill(frame: pl.DataFrame, key: str, name_col: str):
        for pid, image, name, n in frame.iter_rows():
            out.setdefault((pid, image), {}).setdefault(key, {})[str(name)] = n

    fill(events.filter(pl.col("event") == SYS_ENTER)
         .group_by("task_pid", "image", "id").agg(pl.len())
         .sort("len", "id", descending=[True, False])
         .collect(), "syscalls_by_id", "id")
    interrupts = events.filter(
        (pl.col("system").is_in(list(INTERRUPT_SYSTEMS)) & pl.col("event").is_in(ctx.events_named("_entry")))
        | ((pl.col("event") == EXCEPTION) & (pl.col("vector") != PF_VECTOR))
        | (pl.col("event") == "hw_interrupt"))
    fill(interrupts.with_columns(
        pl.when(pl.col("event").is_in([EXCEPTION, "hw_interrupt"]))
        .then(pl.concat_str([pl.col("event"), pl.lit(" vector "),
                             pl.col("vector").cast(pl.String)]))
        .otherwise(pl.col("event")).alias("_what"))
         .group_by("task_pid", "image", "_what").agg(pl.len())
         .sort("len", "_what", descending=[True, False])
         .collect(), "interrupts", "_what")
    fill(events.filter(pl.col("event").is_in(list(SIGNAL_EVENTS)))
         .with_columns(pl.concat_str([pl.col("event"), pl.lit(" sig "), pl.col("sig").cast(pl.String)])
                       .alias("_what"))
         .group_by("task_pid", "image", "_what").agg(pl.len())
         .sort("len", "_what", descending=[True, False]).collect(), "signals", "_what")
    return out
