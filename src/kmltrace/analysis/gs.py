"""``gs_write``: a kernel-mode process calling arch_prctl(ARCH_SET_GS).

On KML both GS base MSRs hold the kernel's per-CPU base while a kernel-mode process runs, so
arch_prctl(ARCH_SET_GS) returns 0 but the GS the process uses does not change; on an SMP
kernel it can corrupt per-CPU access. A user-mode process doing the same is fine.
"""

from __future__ import annotations

import polars as pl

from kmltrace.analysis.incidents import Incident, evidence
from kmltrace.schema import SYS_ENTER

NR_ARCH_PRCTL = 158
ARCH_SET_GS = 0x1001


def gs_writes(ctx) -> pl.LazyFrame:
    """sys_enter rows of arch_prctl(ARCH_SET_GS, ...), with the caller's mode."""
    modes = ctx.processes.select(pl.col("pid").alias("task_pid"), "image",
                                 pl.col("mode").alias("task_mode")).lazy()
    columns = ["row", "ts_ns", "cpu", "task_pid", "task_comm", "image", "source", "file",
               "line", "event", "id", "args"]
    return (ctx.events.select(columns).filter((pl.col("event") == SYS_ENTER) & (pl.col("id") == NR_ARCH_PRCTL)
                              & (pl.col("args").list.first() == ARCH_SET_GS))
            .join(modes, on=["task_pid", "image"], how="left", nulls_equal=True))


def gs_incidents(ctx) -> list[Incident]:
    calls = gs_writes(ctx).filter(pl.col("task_mode") == "kernel").collect()
    smp = (ctx.kernel.cpus or 1) > 1
    out = []
    for (pid, image), group in calls.group_by(["task_pid", "image"], maintain_order=True):
        first = group.row(0, named=True)
        args = first["args"] or []
        value = f"{args[1]:#x}" if len(args) > 1 and args[1] is not None else "..."
        out.append(Incident(
            "gs_write",
            f"kernel-mode process {first['task_comm']} ({pid}) called arch_prctl(ARCH_SET_GS, "
            f"{value}) {group.height} time(s)"
            + (f" on an SMP kernel ({ctx.kernel.cpus} CPUs)" if smp else ""),
            severity="error" if smp else "warning",
            pid=pid, comm=first["task_comm"], cpu=first["cpu"], ts_ns=first["ts_ns"],
            evidence=[evidence(r["file"] or r["source"], f"sys_enter NR {NR_ARCH_PRCTL} "
                               f"(arch_prctl) args[0]={ARCH_SET_GS:#x}", r["line"], row=r["row"],
                               ts_ns=r["ts_ns"]) for r in group.head(5).iter_rows(named=True)],
            explanation="KML keeps both GS base MSRs at the kernel's per-CPU base while a "
                        "kernel-mode process runs: the call returns 0 but the process's GS does "
                        "not change, and the kernel's per-CPU accesses can go wrong on SMP.",
            extra={"count": group.height, "image": image}))
    return out
