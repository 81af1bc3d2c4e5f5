"""How the previous boot ended, from a ``last_boot`` bundle (the boot-mapped ftrace instance
read after a reset; kmltrace.collectors.boot_trace).

The report gets ``previous_boot``: per CPU the kernel's verdict on its preserved buffer, its
last events and what was in flight (the report's ``in_flight`` rows of that CPU); the last
page faults of each process, kernel-mode processes first; notes for CPUs whose buffer was
lost. An ``unclean_reset`` incident is raised when the trace shows no shutdown: no task
entered reboot(2) (a clean reboot or poweroff goes through it; sysrq-b, a watchdog or a
triple fault do not). Its cause is left unknown unless the same analysis holds a
``triple_fault`` from other evidence (a QEMU log, a console).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from kmltrace.analysis.incidents import Incident, evidence
from kmltrace.schema import SYS_ENTER

#: x86_64 reboot(2): the path of every clean reboot, halt and poweroff
REBOOT_NR = 169
LAST_EVENTS = 6
#: x86_64 kernel text mapping (KASLR moves the kernel inside it)
KERNEL_TEXT = 0xFFFFFFFF80000000
LAST_FAULTS = 5
FAULT_EVENTS = ("page_fault_user", "page_fault_kernel")
EVENT_COLUMNS = ("ts_ns", "cpu", "task_pid", "event", "id", "vector", "address", "ip",
                 "error_code", "prev_pid", "next_pid")


@dataclass
class PreviousBoot:
    section: dict
    incidents: list[Incident] = field(default_factory=list)


def last_boot_manifest(capture) -> dict | None:
    for manifest in getattr(capture, "bundles", []) or []:
        if manifest.get("kind") == "last_boot":
            return manifest
    return None


def _rows(frame: pl.DataFrame) -> list[dict]:
    keep = [c for c in EVENT_COLUMNS if c in frame.columns]
    out = []
    for r in frame.select(keep).iter_rows(named=True):
        out.append({k: v for k, v in r.items() if v is not None})
    return out


def describe(row: dict) -> str:
    """One event in a line: ``12.535192641 cpu0 pid 150 sys_enter id=1``."""
    parts = [f"{row['ts_ns'] / 1e9:.9f}" if row.get("ts_ns") is not None else "?",
             f"cpu{row.get('cpu')}", f"pid {row.get('task_pid')}", str(row.get("event"))]
    for key in ("id", "vector", "address", "ip", "error_code", "prev_pid", "next_pid"):
        if row.get(key) is not None:
            value = row[key]
            parts.append(f"{key}={hex(value) if key in ('address', 'ip') else value}")
    return " ".join(parts)


def analyse(ctx, in_flight: list[dict], incidents: list[Incident]) -> PreviousBoot | None:
    manifest = last_boot_manifest(ctx.capture)
    if manifest is None:
        return None
    info = manifest.get("last_boot") or {}
    states = {int(c): s for c, s in (info.get("cpus") or {}).items()}
    events = ctx.string_events().filter(pl.col("cpu").is_not_null())
    cols = [c for c in EVENT_COLUMNS if c in events.collect_schema().names()]
    last = (events.select(cols + ["row"]).sort("row").group_by("cpu", maintain_order=True)
            .tail(LAST_EVENTS).collect())
    seen_cpus = sorted(set(last.get_column("cpu").to_list()) | set(states))
    cpus, notes, lost = [], [], []
    for cpu in seen_cpus:
        state = states.get(cpu, "no message")
        rows = _rows(last.filter(pl.col("cpu") == cpu))
        entry = {"cpu": cpu, "state": state, "last_events": rows,
                 "in_flight": [r for r in in_flight if r.get("cpu") == cpu]}
        if rows:
            entry["last_ts_ns"] = rows[-1].get("ts_ns")
        if state.startswith("lost") or (not rows and state != "previous_boot"):
            lost.append(cpu)
            why = state.removeprefix("lost: ") if state.startswith("lost") else "no events"
            notes.append(f"CPU {cpu}: the previous boot's buffer of this CPU was LOST "
                         f"(kernel: '{why}'); what it did last is unknown and the trace is not "
                         f"whole")
        cpus.append(entry)

    reboot = (events.filter((pl.col("event") == SYS_ENTER) & (pl.col("id") == REBOOT_NR))
              .select("ts_ns", "cpu", "task_pid").collect())
    delta = (info.get("last_boot_info") or {}).get("text_delta")
    faults = _last_faults(ctx, events, delta)
    ended = "shutdown (reboot(2) entered)" if reboot.height else "no shutdown"
    section = {"instance": (info.get("mapped") or {}).get("instance"),
               "mapped": info.get("mapped"), "last_boot_info": info.get("last_boot_info"),
               "kernel_lines": info.get("lines", []), "ended": ended, "cpus": cpus,
               "lost_cpus": lost, "notes": notes, "last_page_faults": faults}
    out = PreviousBoot(section)
    if not reboot.height and any(c.get("last_events") for c in cpus):
        out.incidents.append(_unclean(cpus, lost, incidents))
    return out


def _last_faults(ctx, events: pl.LazyFrame, text_delta: int | None = None) -> list[dict]:
    faults = (events.filter(pl.col("event").is_in(FAULT_EVENTS))
              .select([c for c in ("row", "ts_ns", "cpu", "task_pid", "event", "address", "ip",
                                   "error_code") if c in events.collect_schema().names()])
              .sort("row").group_by("task_pid", maintain_order=True).tail(LAST_FAULTS)
              .collect())
    modes = {}
    if ctx.processes is not None:
        for r in ctx.processes.select("pid", "mode", "comm").iter_rows(named=True):
            modes[r["pid"]] = (r["mode"], r["comm"])  # the last image's mode wins
    out = []
    for (pid,), group in faults.group_by("task_pid", maintain_order=True):
        mode, comm = modes.get(pid, ("unknown", None))
        rows = []
        for r in group.iter_rows(named=True):
            row = {k: (hex(v) if k in ("address", "ip") and v is not None else v)
                   for k, v in r.items() if k != "row"}
            if text_delta is not None and (r.get("ip") or 0) >= KERNEL_TEXT:
                # the old boot's kernel text address where it is in this boot (KASLR moved
                # it by last_boot_info's text delta): look this one up in today's kallsyms
                row["ip_this_boot"] = hex((r["ip"] + text_delta) % (1 << 64))
            rows.append(row)
        out.append({"pid": pid, "comm": comm, "mode": mode, "faults": rows})
    # kernel-mode processes first, then by their last fault, latest first
    out.sort(key=lambda p: (p["mode"] != "kernel", -(p["faults"][-1].get("ts_ns") or 0)))
    return out


def _unclean(cpus: list[dict], lost: list[int], incidents: list[Incident]) -> Incident:
    ended = [c for c in cpus if c.get("last_ts_ns") is not None]
    # tasks running in a syscall when their CPU stopped recording (a task blocked in a
    # syscall elsewhere is not what the CPU was doing)
    running = [(c["cpu"], r) for c in cpus for r in c.get("in_flight", [])
               if str(r.get("what", "")).startswith("sys_enter") and r.get("on_cpu") is not False]
    summary = "the previous boot ended with no shutdown: its trace stops mid-work"
    if running:
        summary += "; in a syscall when their CPU stopped: " + ", ".join(
            f"CPU {cpu} pid {r.get('pid')} ({r['what']})" for cpu, r in running)
    if lost:
        summary += f"; CPU(s) {', '.join(map(str, lost))} lost their buffer"
    triple = [i for i in incidents if i.kind == "triple_fault"]
    explanation = ("No task entered reboot(2), so this was not a clean reboot or poweroff: the "
                   "machine was reset under the running kernel (a triple fault, a watchdog, a "
                   "reset button, sysrq-b). ")
    explanation += ("Other evidence in this analysis shows a triple fault (see the triple_fault "
                    "incident)." if triple else
                    "Nothing in this analysis shows which: the preserved trace alone cannot "
                    "tell a triple fault from another reset.")
    ev = []
    for c in cpus:
        for row in c.get("last_events", [])[-2:]:
            ev.append(evidence("ftrace", describe(row)))
        for r in c.get("in_flight", []):
            ev.append(evidence("analysis", f"cpu{c['cpu']} in flight: {_flight(r)}"))
    one = running[0] if len(running) == 1 else None
    return Incident("unclean_reset", summary, cpu=one[0] if one else None,
                    pid=one[1].get("pid") if one else None,
                    ts_ns=max((c["last_ts_ns"] for c in ended), default=None), evidence=ev,
                    explanation=explanation, extra={"lost_cpus": lost,
                                                    "cause": "triple_fault" if triple else None})


def render_rich(section: dict, console) -> None:
    """The previous boot's end, per CPU (kernel strings through rich Text)."""
    from rich.table import Table
    from rich.text import Text

    from kmltrace.output import safe_text

    console.print(Text(f"Previous boot: ended with {section.get('ended')}", style="bold"))
    for note in section.get("notes", []):
        console.print(Text(safe_text(note), style="bold red"))
    table = Table(title="Last events per CPU of the previous boot")
    for name in ("cpu", "kernel says", "last events", "in flight"):
        table.add_column(name)
    for c in section.get("cpus", []):
        table.add_row(Text(str(c["cpu"])), Text(safe_text(c["state"])),
                      Text("\n".join(safe_text(describe(r)) for r in c.get("last_events", []))),
                      Text("\n".join(safe_text(_flight(r)) for r in c.get("in_flight", []))))
    console.print(table)
    faults = Table(title="Last page faults per process (kernel-mode first)")
    for name in ("pid", "comm", "mode", "last faults"):
        faults.add_column(name)
    for p in section.get("last_page_faults", []):
        faults.add_row(Text(str(p["pid"])), Text(safe_text(p.get("comm") or "")),
                       Text(safe_text(p["mode"])),
                       Text("\n".join(safe_text(f"{f.get('ts_ns')} cpu{f.get('cpu')} "
                                                f"{f.get('event')} addr={f.get('address')} "
                                                f"ip={f.get('ip')}")
                                      for f in p["faults"])))
    console.print(faults)


def _flight(row: dict) -> str:
    text = f"pid {row.get('pid')} {row.get('what')}"
    return text + (" (blocked, not on the CPU)" if row.get("on_cpu") is False else "")


def render_markdown(section: dict) -> str:
    from kmltrace.output import safe_text

    lines = [f"## Previous boot: ended with {section.get('ended')}", ""]
    lines += [f"- **{note}**" for note in section.get("notes", [])]
    for c in section.get("cpus", []):
        lines.append(f"- CPU {c['cpu']} ({c['state']}):")
        lines += [f"  - `{describe(r)}`" for r in c.get("last_events", [])]
        lines += [f"  - in flight: {safe_text(_flight(r))}" for r in c.get("in_flight", [])]
    return "\n".join(lines) + "\n"
