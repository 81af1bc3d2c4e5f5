"""``gs_write``: a kernel-mode process calling arch_prctl(ARCH_SET_GS).

On KML both GS base MSRs hold the kernel's per-CPU base while a kernel-mode process runs, so
arch_prctl(ARCH_SET_GS) returns 0 but the GS the process uses does not change; on an SMP
kernel it can corrupt per-CPU access. A user-mode process doing the same is fine.

The CPU's own state shows a GS write that no trace saw (a ``wrgsbase`` or a write to
MSR_GS_BASE): in a kernel-mode context (CPL 0 on a user-range stack, which only KML has) the GS
base must be the kernel's per-CPU base. That base comes from a snapshot's ``cpus[].gs_base``,
or from a CPU state (guest memory dump, ``info registers``) taken in a kernel-mode context,
whose KERNEL_GS_BASE MSR KML keeps at it. A QEMU ``-d int`` record or such a CPU state at CPL 0
on a user-range stack with another GS base is a ``gs_write``.
"""

from __future__ import annotations

import polars as pl

from kmltrace.analysis.incidents import Incident, evidence
from kmltrace.analysis.kernel import USER_TOP
from kmltrace.schema import EXCEPTION, SYS_ENTER

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


def _int(value) -> int | None:
    try:
        return value if isinstance(value, int) else int(str(value), 0)
    except (TypeError, ValueError):
        return None


def _kernel_mode_context(cpl, rsp) -> bool:
    return cpl == 0 and rsp is not None and rsp < USER_TOP


def _cpu_states(capture) -> list[tuple[str, dict]]:
    """(input path, state) of every CPU state a guest memory dump or register file gave."""
    return [(str(p.path), s) for p in capture.inputs
            for s in (p.meta.get("cpu_state") or []) if isinstance(s, dict)]


def percpu_bases(capture) -> tuple[dict, str | None]:
    """CPU -> the kernel's per-CPU GS base, and where it was read (None: not known)."""
    for snap in capture.metas("snapshot"):
        if not isinstance(snap, dict):
            continue
        bases = {c.get("cpu", i): _int(c.get("gs_base"))
                 for i, c in enumerate(snap.get("cpus") or []) if isinstance(c, dict)}
        bases = {k: v for k, v in bases.items() if v}
        if bases:
            return bases, "the snapshot's per-CPU base"
    bases = {}
    for _, state in _cpu_states(capture):
        kgs = _int(state.get("kernel_gs_base"))
        if kgs and _kernel_mode_context(state.get("cpl"), _int(state.get("rsp"))):
            bases[state.get("cpu", 0)] = kgs
    return bases, ("KERNEL_GS_BASE of a CPU state in a kernel-mode context (KML keeps both "
                   "GS base MSRs at the per-CPU base)") if bases else None


def cpu_state_gs_incidents(ctx) -> list[Incident]:
    """gs_write from QEMU records and CPU states: CPL 0 on a user-range stack with a GS base
    that is not the kernel's per-CPU base (one incident per CPU)."""
    bases, origin = percpu_bases(ctx.capture)
    if not bases:
        return []
    names = set(ctx.events.collect_schema().names())
    seen: dict = {}
    if "gs_base" in names:
        records = (ctx.events.filter((pl.col("source") == "qemu") & (pl.col("event") == EXCEPTION)
                                     & (pl.col("cpl") == 0) & (pl.col("rsp") < USER_TOP)
                                     & pl.col("gs_base").is_not_null())
                   .select("cpu", "gs_base", "ip", "rsp", "file", "line", "row").collect())
        for r in records.iter_rows(named=True):
            base = bases.get(r["cpu"] if r["cpu"] is not None else 0)
            if base is not None and r["gs_base"] != base:
                seen.setdefault(r["cpu"], []).append((r["gs_base"], evidence(
                    r["file"] or "qemu", f"CPL 0, RIP {r['ip']:#x}, RSP {r['rsp']:#x}: GS base "
                    f"{r['gs_base']:#x}, per-CPU base {base:#x}", r["line"], row=r["row"])))
    for path, state in _cpu_states(ctx.capture):
        gs_base, cpu = _int(state.get("gs_base")), state.get("cpu", 0)
        base = bases.get(cpu)
        if (base is not None and gs_base is not None and gs_base != base
                and _kernel_mode_context(state.get("cpl"), _int(state.get("rsp")))):
            seen.setdefault(cpu, []).append((gs_base, evidence(
                path, f"CPU {cpu} state: CPL 0, RIP {state.get('rip')}, RSP {state.get('rsp')}:"
                      f" GS base {gs_base:#x}, per-CPU base {base:#x}")))
    smp = (ctx.kernel.cpus or 1) > 1
    out = []
    for cpu, proofs in seen.items():
        out.append(Incident(
            "gs_write",
            f"code at CPL 0 on a user-range stack (a kernel-mode context) on CPU {cpu} ran with "
            f"GS base {proofs[0][0]:#x}, not the "
            f"kernel's per-CPU base {bases[cpu]:#x}: its GS base was written"
            + (f" on an SMP kernel ({ctx.kernel.cpus} CPUs)" if smp else ""),
            severity="error" if smp else "warning", cpu=cpu, evidence=[e for _, e in proofs[:5]],
            explanation="KML keeps both GS base MSRs at the kernel's per-CPU base while a "
                        "kernel-mode process runs. The CPU's own state shows another value at "
                        "CPL 0 on a user-range stack: the process wrote its GS base (wrgsbase "
                        "or MSR_GS_BASE), so the kernel's per-CPU accesses (%gs-relative) go to "
                        f"the wrong memory. The per-CPU base is from {origin}.",
            extra={"count": len(proofs), "percpu_base": f"{bases[cpu]:#x}"}))
    return out
