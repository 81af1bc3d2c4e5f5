"""``fault_storm`` (a process faulting far above its own baseline) and ``fault_loop`` (the
same fault at the same ip and address over and over with no progress in between).

A loop is a run of identical faults (vector, ip, address, error code) on one CPU with no
other event between them except interrupts: a sched_switch, a syscall, a different fault or
any other event is progress and ends the run. Works on tracepoints and on QEMU ``exception``
records alike (QEMU's CR2 stands in for the address).
"""

from __future__ import annotations

import polars as pl

from kmltrace.analysis.faults import fault_address, is_fault
from kmltrace.analysis.incidents import Incident, evidence
from kmltrace.schema import EXCEPTION, VECTOR_NAMES

STORM_WINDOW_NS = 100_000_000
STORM_FACTOR = 20          # a window this many times the process's median window ...
STORM_MIN_FAULTS = 1000    # ... with at least this many faults
STORM_MIN_WINDOWS = 5      # and enough history to have a baseline
LOOP_MIN_REPEATS = 32


def _interrupt() -> pl.Expr:
    ev = pl.col("event")
    return (((pl.col("system") == "irq_vectors") | (pl.col("system") == "irq"))
            | (ev == "hw_interrupt")
            | ((ev == EXCEPTION) & (pl.col("vector") >= 32))).fill_null(False)


def fault_loops(ctx) -> pl.DataFrame:
    """Runs of at least LOOP_MIN_REPEATS identical faults with nothing in between."""
    # a loop needs LOOP_MIN_REPEATS faults with one (cpu, ip, address, error code): most
    # captures have none, and then no CPU needs its row-by-row sequence looked at
    candidates = (ctx.events.filter(is_fault())
                  .group_by(pl.col("cpu").fill_null(-1).alias("_cpu"), "ip",
                            fault_address().alias("_a"), "error_code")
                  .agg(pl.len().alias("_n")).filter(pl.col("_n") >= LOOP_MIN_REPEATS)
                  .select("_cpu").unique().collect().get_column("_cpu"))
    if not candidates.len():
        return pl.DataFrame()
    vector = pl.when(pl.col("event") == EXCEPTION).then(pl.col("vector")).otherwise(14)
    # the run detection (a window per CPU, not streamable) sees only narrow columns: the row,
    # the CPU, whether it is a fault and one hash of what makes two faults identical; the
    # wide columns are fetched afterwards for the rows of long runs only
    key = pl.struct(pl.col("event"), vector.alias("_vector"), pl.col("ip"),
                    fault_address().alias("_a"), pl.col("error_code")).hash()
    seq = (ctx.events.filter(~_interrupt() & pl.col("cpu").fill_null(-1).is_in(candidates.implode()))
           .select("row", pl.col("cpu").fill_null(-1).alias("_cpu"),
                   is_fault().fill_null(False).alias("_fault"), key.alias("_key")))
    # a row continues the run when it is a fault identical to the previous row on its CPU
    # (rows are in time order, so the previous row of the CPU is its shift within the group)
    same = pl.col("_key") == pl.col("_key").shift(1).over("_cpu")
    continues = (pl.col("_fault") & pl.col("_fault").shift(1).over("_cpu").fill_null(False)
                 & same.fill_null(False))
    runs = seq.with_columns(continues.alias("_continues")).with_columns(
        (~pl.col("_continues")).cum_sum().over("_cpu").alias("_run"),
        # a run is long enough where LOOP_MIN_REPEATS - 1 rows in a row continued it
        (pl.col("_continues").cast(pl.Int32).rolling_sum(LOOP_MIN_REPEATS - 1).over("_cpu")
         >= LOOP_MIN_REPEATS - 1).alias("_long"))
    long_runs = runs.filter(pl.col("_long")).select("_cpu", "_run").unique()
    loop_rows = (runs.join(long_runs, on=["_cpu", "_run"], how="semi")
                 .filter(pl.col("_fault")).select("row", "_cpu", "_run").collect())
    if not loop_rows.height:
        return pl.DataFrame()
    detail = (ctx.events.filter(pl.col("row").is_in(loop_rows.get_column("row").implode()))
              .select("row", "ts_ns", "task_pid", "task_comm", vector.alias("_vector"), "ip",
                      "error_code", "file", "line", "source",
                      fault_address().alias("fault_address"))
              .join(loop_rows.lazy(), on="row"))
    # first/last by row, not by position: a streaming group-by keeps no order
    first = lambda c: pl.col(c).sort_by("row").first()
    return (detail
            .group_by("_cpu", "_run").agg(
                pl.len().alias("repeats"), pl.col("row").min(), first("ts_ns"),
                pl.col("ts_ns").sort_by("row").last().alias("last_ts"), first("task_pid"),
                first("task_comm"), first("_vector").alias("vector"), first("ip"),
                first("fault_address"), first("error_code"), first("file"), first("line"),
                pl.col("line").sort_by("row").last().alias("last_line"), first("source"))
            .filter(pl.col("repeats") >= LOOP_MIN_REPEATS).sort("row").collect())


def loop_incidents(ctx) -> list[Incident]:
    out = []
    loops = fault_loops(ctx)
    for r in (loops.iter_rows(named=True) if loops.height else []):
        name = VECTOR_NAMES.get(r["vector"], f"vector {r['vector']}")
        cpu = None if r["_cpu"] < 0 else r["_cpu"]
        where = f"ip={_hex(r['ip'])} address={_hex(r['fault_address'])}"
        out.append(Incident(
            "fault_loop",
            f"the same {name} at {where} repeated {r['repeats']} times"
            + (f" on CPU {cpu}" if cpu is not None else "") + " with no progress in between",
            pid=r["task_pid"], comm=r["task_comm"], cpu=cpu, ts_ns=r["ts_ns"],
            evidence=[evidence(r["file"] or r["source"], f"first: {name} {where} "
                               f"error_code={_hex(r['error_code'])}", r["line"], row=r["row"]),
                      evidence(r["file"] or r["source"], f"last of {r['repeats']}",
                               r["last_line"])],
            explanation="Each fault returned to the same instruction, which faulted again at "
                        "the same address: the handler never fixed the cause and nothing else "
                        "ran on this CPU in between. The CPU is wedged, not reset.",
            extra={"repeats": r["repeats"]}))
    return out


def _hex(value):
    return None if value is None else f"{value:#x}"


def fault_storms(ctx) -> pl.DataFrame:
    """Per process image: the peak window when it is far above the image's median window."""
    windows = (ctx.events.filter(is_fault() & pl.col("ts_ns").is_not_null()
                                 & pl.col("task_pid").is_not_null())
               .group_by("task_pid", "image", (pl.col("ts_ns") // STORM_WINDOW_NS).alias("_w"))
               .agg(pl.len().alias("n"), pl.col("task_comm").first(), pl.col("ts_ns").min(),
                    pl.col("cpu").first()))
    return (windows.group_by("task_pid", "image").agg(
                pl.len().alias("windows"), pl.col("n").median().alias("baseline"),
                pl.col("n").max().alias("peak"),
                pl.col("ts_ns").sort_by("n").last(), pl.col("task_comm").first(),
                pl.col("cpu").sort_by("n").last())
            .filter((pl.col("windows") >= STORM_MIN_WINDOWS)
                    & (pl.col("peak") >= STORM_MIN_FAULTS)
                    & (pl.col("peak") >= STORM_FACTOR * pl.col("baseline")))
            .sort("ts_ns").collect())


def storm_incidents(ctx) -> list[Incident]:
    per_s = 1e9 / STORM_WINDOW_NS
    return [Incident(
        "fault_storm",
        f"{r['task_comm']} ({r['task_pid']}) took {r['peak']} faults in "
        f"{STORM_WINDOW_NS // 1_000_000} ms ({r['peak'] * per_s:.0f}/s), "
        f"{r['peak'] / max(r['baseline'], 1):.0f}x its median of {r['baseline']:.0f}",
        pid=r["task_pid"], comm=r["task_comm"], cpu=r["cpu"], ts_ns=r["ts_ns"],
        evidence=[evidence("events", f"peak window starting at ts_ns={r['ts_ns']}")],
        extra={"peak": r["peak"], "baseline": r["baseline"], "image": r["image"]})
        for r in fault_storms(ctx).iter_rows(named=True)]
