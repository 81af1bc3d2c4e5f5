"""The report's ``in_flight``: per CPU, what had started and not finished when the capture
ended (a syscall entered and not exited, an interrupt handler entered and not left, the task
on the CPU). Useful most after a reset: the last thing each CPU was doing."""

from __future__ import annotations

import polars as pl

from kmltrace.schema import SCHED_PROCESS_EXIT, SCHED_SWITCH, SYS_ENTER, SYS_EXIT


def _pairs(ctx) -> pl.Expr:
    """Entry/exit events of interrupts and handlers (``*_entry`` / ``*_exit``)."""
    return pl.col("event").is_in(ctx.events_named("_entry") + ctx.events_named("_exit"))


def _last_rows(events: pl.LazyFrame, by: str) -> pl.LazyFrame:
    """The last row (highest ``row``) of each `by` group."""
    rows = events.group_by(by).agg(pl.col("row").max()).collect().get_column("row")
    return events.filter(pl.col("row").is_in(rows.implode()))


def in_flight(ctx) -> list[dict]:
    events = ctx.events.filter(pl.col("cpu").is_not_null() & pl.col("ts_ns").is_not_null())
    out = []
    # the task on each CPU at the end: the last switch's next task, else the last event's
    last_switch = (events.filter(pl.col("event") == SCHED_SWITCH).group_by("cpu")
                   .agg(pl.col("next_pid").last().alias("pid"),
                        pl.col("next_comm").last().alias("comm"), pl.col("ts_ns").last()))
    # the last row of each group is found on the integer row column alone, then fetched
    last_event = _last_rows(events, "cpu").select(
        "cpu", pl.col("task_pid").alias("pid_any"), pl.col("task_comm").alias("comm_any"))
    on_cpu = (last_event.join(last_switch, on="cpu", how="left")
              .with_columns(pl.coalesce("pid", "pid_any").alias("pid"),
                            pl.coalesce("comm", "comm_any").alias("comm"))
              .sort("cpu").collect())
    # a syscall is per task (it can sleep and resume elsewhere): the task's last raw_syscalls
    last_sys = (_last_rows(events.filter(pl.col("event").is_in([SYS_ENTER, SYS_EXIT])),
                           "task_pid")
                .select("task_pid", "event", "id", "ts_ns", "cpu")
                .filter(pl.col("event") == SYS_ENTER))
    # a task that exited after its last sys_enter is not in a syscall (exit and exit_group
    # never return, so their sys_enter has no sys_exit)
    exits = (events.filter(pl.col("event") == SCHED_PROCESS_EXIT)
             .group_by("task_pid").agg(pl.col("ts_ns").max().alias("exit_ns")))
    last_sys = (last_sys.join(exits, on="task_pid", how="left")
                .filter(pl.col("exit_ns").is_null() | (pl.col("exit_ns") < pl.col("ts_ns")))
                .drop("exit_ns").collect())
    open_sys = {r["task_pid"]: r for r in last_sys.iter_rows(named=True)}
    last_irq = (events.filter(_pairs(ctx)).group_by("cpu")
                .agg(pl.col("event").last(), pl.col("ts_ns").last(), pl.col("task_pid").last())
                .filter(pl.col("event").is_in(ctx.events_named("_entry"))).collect())
    irq = {r["cpu"]: r for r in last_irq.iter_rows(named=True)}
    for r in on_cpu.iter_rows(named=True):
        cpu, pid = r["cpu"], r["pid"]
        out.append({"cpu": cpu, "pid": pid, "comm": r["comm"], "what": "on cpu",
                    "ts_ns": r["ts_ns"]})
        if pid in open_sys:
            s = open_sys.pop(pid)
            out.append({"cpu": cpu, "pid": pid, "what": f"sys_enter id={s['id']}",
                        "ts_ns": s["ts_ns"]})
        if cpu in irq:
            i = irq[cpu]
            out.append({"cpu": cpu, "pid": i["task_pid"], "what": i["event"], "ts_ns": i["ts_ns"]})
    # tasks blocked in a syscall, not on any CPU at the end
    for pid, s in sorted(open_sys.items(), key=lambda kv: (kv[1]["cpu"], kv[0] or 0)):
        out.append({"cpu": s["cpu"], "pid": pid, "what": f"sys_enter id={s['id']}",
                    "ts_ns": s["ts_ns"], "on_cpu": False})
    return out
