"""For every exception and interrupt: from which CPL and stack it came, and where its frame
landed (``rsp0``, ``istN`` or ``same``; see analysis/stacks.py), and the incidents that follow:

- ``redzone_clobber``: a ``same`` landing while a kernel-mode process ran on its own
  user-range stack: the CPU pushed the frame below its %rsp, over the 128-byte red zone.
  Only frames that were pushed count (``pushed``): a delivery during which the CPU faulted
  again (the next record names it as ``prev_vector``, or a triple fault followed), or a CPL 0
  #PF whose CR2 lies within the frame below RSP, never wrote its frame: that is starvation
  (analysis/chains.py), not a clobbered red zone;
- ``stack_starvation`` (predicted, warning): a kernel-mode process faulted on its own stack
  pages while the #PF gate has no IST: the first such fault that finds no mapped page cannot
  push its frame, and the machine double-faults and resets;
- ``ist_missing``: on a KML kernel, an ordinary gate with IST 0 or an unusable IST pointer.
"""

from __future__ import annotations

import polars as pl

from kmltrace.analysis.chain_model import FRAME_BYTES
from kmltrace.analysis.faults import DELIVERY_COLUMNS
from kmltrace.analysis.incidents import Incident, evidence
from kmltrace.analysis.kernel import USER_TOP
from kmltrace.analysis.stacks import ist_of_vector_expr, landing_stack_expr
from kmltrace.schema import (EXCEPTION, PAGE_FAULT_EVENTS, PF_USER, PF_VECTOR, VECTOR_NAMES)

#: the timer and the other ordinary gates a kernel-mode process can take in its own code
ORDINARY_GATES = (PF_VECTOR, 13, 6, 0)
LOCAL_TIMER_VECTOR = 0xEC
MAX_EVIDENCE = 5
#: the classified fault rows landing_incidents reads (analysis/faults.py gives more)
FAULT_ROW_SCHEMA = {"row": pl.Int64, "ts_ns": pl.Int64, "cpu": pl.Int32, "task_pid": pl.Int32,
                    "task_comm": pl.String, "image": pl.Int32, "source": pl.String,
                    "file": pl.String, "line": pl.Int64, "event": pl.String,
                    "vector": pl.Int32, "ip": pl.UInt64, "address": pl.UInt64,
                    "error_code": pl.UInt64, "klass": pl.String}


def landings(ctx) -> pl.LazyFrame:
    """Exception and interrupt rows with ``cpl``, ``on_user_stack``, ``ist``, ``stack`` and
    ``pushed`` (False when the CPU could not write the frame)."""
    ev = pl.col("event")
    is_pf = ev.is_in(list(PAGE_FAULT_EVENTS))
    u_set = (pl.col("error_code") & PF_USER) != 0
    delivered = (is_pf | (ev == EXCEPTION) | (ev == "hw_interrupt")
                 | ((pl.col("system") == "irq_vectors") & ev.is_in(ctx.events_named("_entry"))))
    names = set(ctx.events.collect_schema().names())
    prev = pl.col("prev_vector") if "prev_vector" in names else pl.lit(None, dtype=pl.Int32)
    # QEMU's records of one CPU in log order: a fault raised while delivering a record (or a
    # triple fault) comes next and names the record's vector as prev_vector
    nested = (ev == EXCEPTION) | (ev == "triple_fault")
    rows = (ctx.events.select(*DELIVERY_COLUMNS, prev.alias("_prev"))
            .filter((delivered & (is_pf | pl.col("vector").is_not_null())) | nested)
            .with_columns(pl.when(nested).then(pl.col("_prev")).alias("_prev"))
            .with_columns(pl.col("_prev").shift(-1).over("file", "cpu", order_by="row")
                          .alias("_next_prev"))
            .filter(ev != "triple_fault"))
    rows = rows.with_columns(
        pl.when(is_pf).then(pl.lit(PF_VECTOR)).otherwise(pl.col("vector")).cast(pl.Int32)
        .alias("vector"),
        # a page fault's U/S bit is the CPL it was taken at; other records carry their CPL
        pl.when(is_pf).then(pl.when(u_set).then(3).otherwise(0))
        .otherwise(pl.col("cpl")).cast(pl.Int32).alias("cpl"),
    ).with_columns(
        ist_of_vector_expr(pl.col("vector"), ctx.kernel.ist).alias("ist"),
        pl.when(pl.col("rsp").is_not_null()).then(pl.col("rsp") < USER_TOP)
        # a CPL 0 fault reported as page_fault_user was taken in the process's own code,
        # which runs on its own (user-range) stack
        .when((ev == "page_fault_user") & (pl.col("cpl") == 0)).then(pl.lit(True))
        .alias("on_user_stack"),
    ).with_columns(landing_stack_expr(pl.col("cpl"), pl.col("ist")).alias("stack"))
    rsp, cr2 = pl.col("rsp"), pl.col("address")
    frame_faulted = ((pl.col("vector") == PF_VECTOR) & (pl.col("stack") == "same")
                     & (rsp > cr2) & (pl.when(rsp > cr2).then(rsp - cr2) <= FRAME_BYTES))
    return rows.with_columns(
        ~(pl.col("_next_prev").eq_missing(pl.col("vector")) | frame_faulted.fill_null(False))
        .alias("pushed")).drop("_prev", "_next_prev")


def landing_counts(frame: pl.DataFrame) -> list[dict]:
    """How many deliveries of each vector landed where, from which CPL (for the report)."""
    grouped = (frame.group_by("vector", "cpl", "stack")
               .agg(pl.len().alias("count"), (~pl.col("pushed")).sum().alias("not_pushed"))
               # ties by key: the order must not depend on the engine's group order
               .sort(["count", "vector", "cpl", "stack"], descending=[True, False, False, False],
                     nulls_last=True))
    # not_pushed: deliveries whose frame was never written (the push itself faulted)
    return [{"vector": v, "name": VECTOR_NAMES.get(v, f"vector {v}" if v is not None else None),
             "cpl": c, "stack": s, "count": n, "not_pushed": u}
            for v, c, s, n, u in grouped.iter_rows()]


def _evidence_rows(frame: pl.DataFrame) -> list[dict]:
    out = []
    for r in frame.head(MAX_EVIDENCE).iter_rows(named=True):
        text = (f"{r['event']} vector {r['vector']} ip={_hex(r['ip'])}"
                f" address={_hex(r.get('fault_address', r.get('address')))}"
                f" error_code={_hex(r['error_code'])} -> stack {r['stack']}")
        out.append(evidence(r["file"] or r["source"] or "?", text, r["line"], row=r["row"],
                            ts_ns=r["ts_ns"]))
    return out


def _who(row: dict, pid) -> str:
    if pid is None:
        return "the CPL 0 code without a pid (QEMU records)"
    return f"kernel-mode process {row['task_comm']} ({pid})"


def _hex(value):
    return None if value is None else f"{value:#x}"


def landing_incidents(ctx, landed: pl.DataFrame, faults: pl.DataFrame) -> list[Incident]:
    """redzone_clobber and predicted stack_starvation per kernel-mode process image."""
    incidents = []
    kernel_rows = ctx.processes.filter(pl.col("mode") == "kernel")
    if not kernel_rows.height:
        return incidents
    mode = kernel_rows.select(pl.col("pid").alias("task_pid"), "image",
                              pl.lit(True).alias("_kernel_mode"))
    clobbers = (landed.join(mode, on=["task_pid", "image"], how="inner", nulls_equal=True)
                .filter((pl.col("stack") == "same") & pl.col("on_user_stack").fill_null(False)
                        & pl.col("pushed")))
    for (pid, image), group in clobbers.group_by(["task_pid", "image"], maintain_order=True):
        first = group.row(0, named=True)
        incidents.append(Incident(
            "redzone_clobber",
            f"{group.height} exception/interrupt frame(s) pushed on {_who(first, pid)}'s own "
            f"user-range stack at CPL 0 (no stack switch), over its red zone",
            pid=pid, comm=first["task_comm"], cpu=first["cpu"], ts_ns=first["ts_ns"],
            evidence=_evidence_rows(group),
            explanation="The process runs at CPL 0, so an exception or interrupt through a gate "
                        "without IST does not switch stacks: the CPU pushes its frame right below "
                        "the process's %rsp, overwriting the 128 bytes the System V ABI lets "
                        "leaf functions use without moving %rsp.",
            extra={"count": group.height, "image": image}))
    pf_ist = ctx.kernel.ist.get(PF_VECTOR)
    if pf_ist is None or pf_ist > 0:   # unknown gate, or #PF has its own stack
        return incidents
    faults = faults.with_columns([pl.lit(None, dtype=t).alias(c) for c, t in
                                  FAULT_ROW_SCHEMA.items() if c not in faults.columns])
    starving = (faults.join(mode, on=["task_pid", "image"], how="inner", nulls_equal=True)
                # faults in the process's own code (page_fault_kernel is kernel code, which
                # runs on the kernel stack)
                .filter((pl.col("klass") == "stack") & (pl.col("event") != "page_fault_kernel"))
                .with_columns(pl.lit("same").alias("stack")))
    for (pid, image), group in starving.group_by(["task_pid", "image"], maintain_order=True):
        first = group.row(0, named=True)
        incidents.append(Incident(
            "stack_starvation",
            f"predicted: {_who(first, pid)} took {group.height} "
            f"page fault(s) on its own stack pages while #PF has no IST",
            severity="warning", pid=pid, comm=first["task_comm"], cpu=first["cpu"],
            ts_ns=first["ts_ns"], evidence=_evidence_rows(group),
            explanation="A #PF at CPL 0 pushes its frame on the faulting stack itself. These "
                        "faults found their page mapped after the fact; the first one whose "
                        "frame push hits an unmapped stack page raises #DF and, without a "
                        "usable #DF stack, resets the machine.",
            extra={"count": group.height, "image": image, "predicted": True,
                   "ist_source": ctx.kernel.ist_source}))
    return incidents


def ist_missing_incidents(ctx) -> list[Incident]:
    """On a KML kernel, ordinary gates without IST (from a snapshot's IDT) and bad IST slots."""
    if not ctx.kernel.kml:
        return []
    out = []
    for snap in ctx.capture.metas("snapshot"):
        if not isinstance(snap, dict):
            continue
        gates = {int(g["vector"]): g for g in snap.get("idt") or [] if "vector" in g}
        bad = [v for v in (*ORDINARY_GATES, LOCAL_TIMER_VECTOR)
               if v in gates and gates[v].get("present", True) and not gates[v].get("ist")]
        if bad:
            names = ", ".join(VECTOR_NAMES.get(v, f"vector {v:#x}") for v in bad)
            out.append(Incident(
                "ist_missing", f"KML kernel: IDT gate(s) {names} use no IST",
                evidence=[evidence("snapshot", f"idt[{v}] ist=0 handler={gates[v].get('handler')}")
                          for v in bad[:MAX_EVIDENCE]]))
        ist_by_cpu = [tuple((c.get("tss") or {}).get("ist") or []) for c in snap.get("cpus") or []]
        for cpu, slots in enumerate(ist_by_cpu):
            if len(slots) >= 5 and _int(slots[4]) in (0, None):
                out.append(Incident("ist_missing", f"KML kernel: CPU {cpu}'s TSS IST5 is null",
                                    cpu=cpu, evidence=[evidence("snapshot", f"cpu {cpu} ist={list(slots)}")]))
        shared = {s for s in ist_by_cpu if s}
        if len(ist_by_cpu) > 1 and len(shared) < len([s for s in ist_by_cpu if s]):
            out.append(Incident("ist_missing", "KML kernel: CPUs share IST stacks",
                                evidence=[evidence("snapshot", str(ist_by_cpu[:4]))]))
    return out


def _int(value):
    try:
        return value if isinstance(value, int) else int(str(value), 0)
    except (TypeError, ValueError):
        return None
