"""Which processes ran in kernel mode, which in user mode, which are kernel threads: with the
evidence for each verdict, one row per exec image (a fork child that execs into ``/trusted``
is a user row before the exec and a kernel row after it). Never decided from the comm alone.

Evidence, strongest first:

- KML's page-fault signature: a kernel-mode process's own faults are reported as
  ``exceptions:page_fault_user`` (KML's user_mode() is true for it) but the CPU took them at
  CPL 0, so the U/S bit (2) of error_code is clear; a CPL 3 fault always has it set;
- a snapshot's saved CS: KML writes 0x7fff0013 (``0x7fff0003 | __KERNEL_CS``) into pt_regs->cs
  of kernel-mode processes, a 64-bit user task has 0x33 (compat 0x23); TIF_KU (bit 31);
- a QEMU record at CPL 0 with a user-range RIP and RSP; perf samples' cpumode;
- the program's path under ``/trusted`` (collector metadata or sched_process_exec);
- kernel threads: pid 0 (idle) and 2 (kthreadd), tasks forked by kthreadd or by another
  kernel thread (sched_process_fork), a snapshot task without mm, a process entry without exe
  and maps. A name is never evidence (anyone can call a program ``kworker/0``), nor are
  sched_switch's prev_state or prio; without evidence the mode is ``unknown``, and that is said.
"""

from __future__ import annotations

import polars as pl

from kmltrace.analysis.kernel import USER_TOP
from kmltrace.schema import (PAGE_FAULT_KERNEL, PAGE_FAULT_USER, PF_USER, SCHED_PROCESS_EXEC,
                             SCHED_PROCESS_FORK, SCHED_SWITCH, SYS_ENTER, SYS_EXIT)

TRUSTED_DIR = "/trusted/"
KML_CS = 0x7FFF0013
KML_CS_LOW = 0x13
USER_CS = (0x33, 0x23)
TIF_KU = 1 << 31
KTHREADD_PID = 2
USER_ACTIVITY_EVENTS = (SYS_ENTER, SYS_EXIT, PAGE_FAULT_USER, SCHED_PROCESS_EXEC,
                        "signal_deliver")

PROCESS_SCHEMA = {
    "pid": pl.Int32, "image": pl.Int32, "tgid": pl.Int32, "comm": pl.String, "exe": pl.String,
    "mode": pl.String, "evidence": pl.List(pl.String), "events": pl.UInt32,
    "first_ts": pl.Int64, "last_ts": pl.Int64, "page_faults": pl.UInt32,
    "kml_faults": pl.UInt32, "user_faults": pl.UInt32, "syscalls": pl.UInt32,
}


def _per_image(events: pl.LazyFrame) -> pl.DataFrame:
    """Counts per (pid, exec image). One light pass over every row (times, counts per event
    name), the rest over the few rows each piece of evidence needs."""
    ev = pl.col("event")
    key = ["task_pid", "image"]
    pf_user = ev == PAGE_FAULT_USER
    u_clear = (pl.col("error_code") & PF_USER) == 0
    # only deliveries say at which CPL the code ran (a cpu_reset dump is the reset state)
    delivery = ev.is_in(["exception", "hw_interrupt"])
    user_range = (pl.col("ip") < USER_TOP) & (pl.col("rsp") < USER_TOP)
    # rows without a task (a QEMU log has no pids) form one pid-less row: its CPU context
    base = events.group_by(key).agg(
        pl.len().alias("events"),
        pl.col("ts_ns").min().alias("first_ts"),
        pl.col("ts_ns").max().alias("last_ts"))
    # names from the last row of each image that has them (its last pid-carrying row)
    names = (events.select(*key, "task_comm", "tgid").filter(pl.col("task_comm").is_not_null())
             .group_by(key).agg(pl.col("task_comm").last().alias("comm"),
                                pl.col("tgid").last().alias("tgid")))
    per_event = (events.group_by(*key, "event").agg(pl.len().alias("n"))
                 .group_by(key).agg(
                     pl.col("n").filter(ev.is_in(list(PAGE_FAULT_EVENTS_ALL))).sum()
                     .alias("page_faults"),
                     pl.col("n").filter(ev.is_in([SYS_ENTER, SYS_EXIT])).sum().alias("syscalls"),
                     pl.col("n").filter(ev.is_in(list(USER_ACTIVITY_EVENTS))).sum()
                     .alias("user_activity")))
    faults = events.filter(pf_user).group_by(key).agg(
        u_clear.sum().alias("kml_faults"),
        (~u_clear).sum().alias("user_faults"),
        pl.struct("file", "line", "error_code").filter(u_clear).first().alias("kml_fault_first"))
    execs = events.filter(ev == SCHED_PROCESS_EXEC).group_by(key).agg(
        pl.col("filename").last().alias("exec_file"))
    cpl = events.filter(delivery | pl.col("cpumode").is_not_null()).group_by(key).agg(
        (delivery & (pl.col("cpl") == 0) & user_range).sum().alias("cpl0_user_range"),
        (delivery & (pl.col("cpl") == 3)).sum().alias("cpl3"),
        ((pl.col("cpumode") == "kernel") & (pl.col("ip") < USER_TOP)).sum()
        .alias("perf_kernel_user_ip"),
        (pl.col("cpumode") == "user").sum().alias("perf_user"))
    # one at a time: in parallel they compete for the same columns and memory
    frames = [q.collect() for q in (base, names, per_event, faults, execs, cpl)]
    out = frames[0]
    for frame in frames[1:]:
        out = out.join(frame, on=key, how="left", nulls_equal=True)
    return out.rename({"task_pid": "pid"})


PAGE_FAULT_EVENTS_ALL = (PAGE_FAULT_USER, PAGE_FAULT_KERNEL)


def process_modes(ctx) -> pl.DataFrame:
    """One row per (pid, exec image) with ``mode`` and its ``evidence`` (see PROCESS_SCHEMA)."""
    events = ctx.events
    images = _per_image(events)
    # tasks only seen being switched to still get a row (kernel threads mostly)
    seen = (events.filter(pl.col("event") == SCHED_SWITCH)
            .select(pl.col("next_pid").alias("pid"), pl.col("next_comm").alias("comm"))
            .drop_nulls("pid").unique("pid", keep="last").collect())
    seen = seen.filter(~pl.col("pid").is_in(images.get_column("pid").implode()))
    forks = (events.filter(pl.col("event") == SCHED_PROCESS_FORK)
             .select("parent_pid", "child_pid", "child_comm").drop_nulls("child_pid").collect())
    parent_of = dict(zip(forks.get_column("child_pid").to_list(),
                         forks.get_column("parent_pid").to_list()))
    fork_comm = dict(zip(forks.get_column("child_pid").to_list(),
                         forks.get_column("child_comm").to_list()))
    proc_json = {int(p["pid"]): p for p in ctx.capture.processes
                 if isinstance(p, dict) and isinstance(p.get("pid"), int)}
    snap_tasks = {}
    for snap in ctx.capture.metas("snapshot"):
        for task in (snap.get("tasks") or []) if isinstance(snap, dict) else []:
            if isinstance(task, dict) and isinstance(task.get("pid"), int):
                snap_tasks[task["pid"]] = task

    rows = images.to_dicts()
    known = {r["pid"] for r in rows}
    for pid, comm in seen.iter_rows():
        rows.append({"pid": pid, "image": 0, "comm": comm, "events": 0})
        known.add(pid)
    for pid in sorted((set(proc_json) | set(snap_tasks)) - known):
        rows.append({"pid": pid, "image": 0, "events": 0})
    last_image = {}
    for r in rows:
        last_image[r["pid"]] = max(last_image.get(r["pid"], 0), r["image"])
    # KML's fault signature anywhere in the capture means the kernel is a KML kernel,
    # whatever the manifest says
    kml_seen = any((r.get("kml_faults") or 0) > 0 for r in rows)
    kernel_possible = ctx.kernel.kml is not False or kml_seen

    out = []
    for r in rows:
        pid, image = r["pid"], r["image"]
        last = image == last_image[pid]
        pj = proc_json.get(pid) if last else None
        task = snap_tasks.get(pid) if last else None
        exe = (pj or {}).get("exe") or r.get("exec_file") or (task or {}).get("exe")
        comm = r.get("comm") or (pj or {}).get("comm") or (task or {}).get("comm")
        # ftrace prints the comm known when the text was read, the post-exec one, for every
        # event of the pid: an earlier image is named after its own program instead
        if not last and r.get("exec_file"):
            comm = str(r["exec_file"]).rsplit("/", 1)[-1][:15]
        elif image == 0 and pid in fork_comm and not last:
            comm = fork_comm[pid]
        tgid = r.get("tgid") or (pj or {}).get("tgid") or (task or {}).get("tgid")
        mode, evidence = _decide(pid, image, r, exe, comm, pj, task, parent_of,
                                 kernel_possible)
        out.append({"pid": pid, "image": image, "tgid": tgid, "comm": comm, "exe": exe,
                    "mode": mode, "evidence": evidence, "events": r.get("events") or 0,
                    "first_ts": r.get("first_ts"), "last_ts": r.get("last_ts"),
                    "page_faults": r.get("page_faults") or 0,
                    "kml_faults": r.get("kml_faults") or 0,
                    "user_faults": r.get("user_faults") or 0,
                    "syscalls": r.get("syscalls") or 0})
    _inherit_thread_group(out, _saved_tgids(ctx.capture))
    frame = pl.DataFrame(out, schema=PROCESS_SCHEMA) if out else pl.DataFrame(schema=PROCESS_SCHEMA)
    return frame.sort("pid", "image", nulls_last=True)


def _decide(pid, image, r, exe, comm, pj, task, parent_of, kernel_possible):
    """(mode, evidence) for one exec image from the counts of `r` and the metadata."""
    kernel, user, kthread = [], [], []
    n = lambda key: r.get(key) or 0  # noqa: E731
    if n("kml_faults"):
        where = r.get("kml_fault_first") or {}
        at = f" (first: {where.get('file')}:{where.get('line')})" if where.get("line") else ""
        kernel.append(f"{n('kml_faults')} page_fault_user with the U/S bit clear: taken at "
                      f"CPL 0{at}")
    if task:
        cs = _int(task.get("cs"))
        flags = _int(task.get("ti_flags") if "ti_flags" in task else task.get("thread_flags"))
        if cs == KML_CS or (cs is not None and cs & 0xFFFF == KML_CS_LOW):
            kernel.append(f"snapshot: saved CS {cs:#x} (KML's kernel-mode marker)")
        elif cs in USER_CS:
            user.append(f"snapshot: saved CS {cs:#x} (user mode)")
        if flags is not None and flags & TIF_KU:
            kernel.append("snapshot: TIF_KU set")
        if task.get("mode") == "kthread":
            kthread.append("snapshot: task has no mm")
    if n("cpl0_user_range"):
        kernel.append(f"{n('cpl0_user_range')} QEMU records at CPL 0 with user-range RIP/RSP")
    if n("perf_kernel_user_ip"):
        kernel.append(f"{n('perf_kernel_user_ip')} perf samples in kernel cpumode at user-range ips")
    if exe and str(exe).startswith(TRUSTED_DIR):
        if kernel_possible:
            kernel.append(f"program {exe} is under {TRUSTED_DIR}")
        else:
            user.append(f"program {exe} is under {TRUSTED_DIR}, but the kernel is not KML")
    if n("user_faults"):
        user.append(f"{n('user_faults')} page_fault_user with the U/S bit set: taken at CPL 3")
    if n("cpl3"):
        user.append(f"{n('cpl3')} QEMU records at CPL 3")
    if n("perf_user"):
        user.append(f"{n('perf_user')} perf samples in user cpumode")
    if n("syscalls") and not kernel:
        user.append(f"{n('syscalls')} syscall events: a process with its own mm, not a kernel thread")

    if image == 0:
        if pid == 0:
            kthread.append("pid 0 is the idle task")
        elif pid == KTHREADD_PID:
            kthread.append("pid 2 is kthreadd (started by rest_init)")
        parent = parent_of.get(pid)
        if parent == KTHREADD_PID:
            kthread.append("forked by kthreadd (pid 2) (sched_process_fork)")
        elif parent is not None and _kthread_ancestry(parent, parent_of):
            kthread.append(f"forked by kernel thread {parent}, a descendant of kthreadd "
                           "(sched_process_fork)")
    if pj is not None and not pj.get("exe") and not pj.get("maps"):
        kthread.append("process metadata: no exe and no memory map (no mm)")
    if kernel:
        if user:
            kernel.append("conflicting: " + "; ".join(user))
        return "kernel", kernel
    if kthread and not user and not n("user_activity"):
        return "kthread", kthread
    if user:
        return "user", user
    return "unknown", kthread or ["no evidence of the mode in this capture (no fork from "
                                  "kthreadd, no user activity, no snapshot or process metadata)"]


def _kthread_ancestry(pid, parent_of: dict, limit: int = 64) -> bool:
    """Whether `pid` descends from kthreadd through forks the capture saw (only kernel
    threads fork from kthreadd's children: user processes never have it as an ancestor)."""
    for _ in range(limit):
        if pid == KTHREADD_PID:
            return True
        pid = parent_of.get(pid)
        if pid is None:
            return False
    return False


def _saved_tgids(capture) -> dict[int, int]:
    """pid -> tgid from each bundle's ftrace/saved_tgids (covers tasks only switched to)."""
    from pathlib import Path

    from kmltrace.formats.ftrace_raw import read_tgids

    out = {}
    for manifest in capture.bundles:
        try:
            text = (Path(manifest["path"]) / "ftrace" / "saved_tgids").read_text()
        except (KeyError, OSError, UnicodeDecodeError):
            continue
        out.update(read_tgids(text))
    return out


def _inherit_thread_group(rows: list[dict], saved_tgids: dict[int, int]) -> None:
    """A task in another task's thread group is a thread of that process: kernel threads are
    never in a thread group with anyone, so an unknown thread takes its leader's mode
    (user when the leader's is unknown too)."""
    leader_mode = {r["pid"]: r["mode"] for r in rows if r["pid"] is not None}
    for r in rows:
        tgid = r["tgid"] or saved_tgids.get(r["pid"])
        if r["mode"] != "unknown" or tgid is None or tgid == r["pid"]:
            continue
        origin = "the trace" if r["tgid"] == tgid else "ftrace saved_tgids"
        r["tgid"] = tgid
        mode = leader_mode.get(tgid)
        r["mode"] = mode if mode in ("user", "kernel") else "user"
        r["evidence"] = [f"a thread of process {tgid} (thread group from {origin}): kernel "
                         f"threads are never in a thread group"
                         + (f"; the group leader is {mode}-mode" if mode else "")]


def _int(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, int):
        return value
    try:
        return int(str(value), 0)
    except ValueError:
        return None
