"""Incidents from a snapshot object alone (CONTRACT.md "The snapshot object", docs/snapshot.md).

- ``ist_missing``: on a KML kernel, a present IDT gate with IST 0 (KML puts every ordinary gate
  on IST 5, so #PF or the timer taken by a kernel-mode process pushes its frame on the
  process's own stack), or an IST slot a gate uses that is null, unmapped or shared by CPUs;
- ``stack_starvation`` (predicted, warning): a kernel-mode task whose saved sp is outside its
  stack VMA or has less than :data:`STARVATION_MARGIN` mapped bytes below it: its next push
  can fault at CPL 0;
- ``gs_write``: a kernel-mode task whose saved GS base is not a kernel per-CPU base (KML keeps
  both GS base MSRs at it);
- ``kernel_mode_process`` (info) for every kernel-mode task.

KML is recognised from the release, the KML entry symbols and the ordinary gates, never from
IST 5 alone: mainline puts #VC on IST 5 too.
"""

from __future__ import annotations

from kmltrace.analysis.incidents import Incident, evidence
from kmltrace.analysis.modes import KML_CS, KML_CS_LOW, TIF_KU, USER_CS
from kmltrace.schema import PF_VECTOR, VECTOR_NAMES

#: symbols only a KML kernel has
KML_SYMBOLS = ("kml_call_entry", "kml_switch_stack", "kml_exit_to_kernel_mode")
LOCAL_TIMER_VECTOR = 0xEC
#: a push at CPL 0 needs a frame (40-48 bytes) and the handler's first locals below sp
STARVATION_MARGIN = 512
MAX_LISTED = 8


def _int(value) -> int | None:
    if value is None:
        return None
    try:
        return value if isinstance(value, int) else int(str(value), 0)
    except ValueError:
        return None


def gate_name(vector: int) -> str:
    if vector == LOCAL_TIMER_VECTOR:
        return "timer (0xec)"
    return VECTOR_NAMES.get(vector, f"vector {vector:#x}")


def kml_evidence(release: str | None, symbols: list[str], idt: list[dict]) -> tuple[bool, list[str]]:
    """(is KML, why) from the release string, the KML symbols found, and the ordinary gates."""
    why = []
    if release and "kml" in release.lower():
        why.append(f"release {release}")
    why += [f"symbol {name}" for name in symbols]
    gates = {g["vector"]: g for g in idt if g.get("present")}
    ordinary = [gates[v] for v in (PF_VECTOR, LOCAL_TIMER_VECTOR) if v in gates]
    if ordinary and all(g.get("ist") for g in ordinary):
        why.append("ordinary gates use an IST: " + ", ".join(
            f"{gate_name(g['vector'])} IST {g['ist']}" for g in ordinary))
    return bool(why), why


def task_mode(cs: int | None, thread_flags: int | None, kthread: bool,
              kml: bool) -> tuple[str, list[str]]:
    """(mode, evidence) of a task: ``kthread`` without an mm; ``kernel`` for KML's saved CS
    marker 0x7fff0013 (0x13 as ptrace and cores show it) or TIF_KU on a KML kernel; ``user``
    for CS 0x33 (0x23 compat); ``unknown`` otherwise."""
    if kthread:
        return "kthread", ["no mm: kernel thread"]
    why = []
    if cs is not None and (cs == KML_CS or cs & 0xFFFF == KML_CS_LOW):
        why.append(f"saved CS {cs:#x}: KML's kernel-mode marker")
    if kml and thread_flags is not None and thread_flags & TIF_KU:
        why.append(f"TIF_KU (bit {TIF_KU.bit_length() - 1}) set in thread flags {thread_flags:#x}")
    if why:
        return "kernel", why
    if cs in USER_CS:
        return "user", [f"saved CS {cs:#x}: user mode"]
    return "unknown", [] if cs is None else [f"saved CS {cs:#x}: not a known mode"]


# -- checks ------------------------------------------------------------------------------------

def check_snapshot(snapshot: dict) -> list[Incident]:
    """Every incident the snapshot object shows by itself."""
    kernel = snapshot.get("kernel") or {}
    incidents = []
    if kernel.get("kml"):
        incidents += ist_missing_incidents(snapshot)
    smp = (kernel.get("cpus") or len(snapshot.get("cpus") or [])) > 1
    bases = {_int(c.get("gs_base")) for c in snapshot.get("cpus") or []} - {None}
    for task in snapshot.get("tasks") or []:
        if task.get("mode") != "kernel":
            continue
        incidents.append(_incident("kernel_mode_process", task,
                                   f"{_who(task)} runs in kernel mode",
                                   [evidence("snapshot", e) for e in task.get("evidence") or []]))
        incidents += starvation_risk(task)
        gs_base = _int(task.get("gs_base"))
        if bases and gs_base is not None and gs_base not in bases:
            incidents.append(_incident(
                "gs_write", task,
                f"{_who(task)} runs in kernel mode with saved GS base {gs_base:#x}, "
                "not a kernel per-CPU base",
                [evidence("snapshot", f"task {task.get('pid')} gs_base={gs_base:#x}; per-CPU "
                          f"bases: {', '.join(f'{b:#x}' for b in sorted(bases)[:4])}")],
                severity="error" if smp else "warning",
                explanation="KML keeps both GS base MSRs at the kernel's per-CPU base; a "
                            "kernel-mode process that changed its GS base makes the next "
                            "interrupt's per-CPU accesses read another address."))
    return incidents


def ist_missing_incidents(snapshot: dict) -> list[Incident]:
    """KML: present gates without IST, and IST slots in use that are null, unmapped or shared."""
    out = []
    gates = [g for g in snapshot.get("idt") or [] if g.get("present")]
    bare = [g for g in gates if not g.get("ist")]
    if bare:
        names = ", ".join(gate_name(g["vector"]) for g in bare[:MAX_LISTED])
        more = f" and {len(bare) - MAX_LISTED} more" if len(bare) > MAX_LISTED else ""
        out.append(Incident(
            "ist_missing", f"KML kernel: {len(bare)} IDT gate(s) use no IST: {names}{more}",
            evidence=[evidence("snapshot", f"idt[{g['vector']}] ist=0 handler={g.get('handler')} "
                               f"{g.get('symbol') or ''}".rstrip()) for g in bare[:MAX_LISTED]],
            explanation="A kernel-mode process runs on its own stack at CPL 0; an exception or "
                        "interrupt through a gate without IST pushes its frame there, and a "
                        "fault on that push becomes a #DF.",
            extra={"vectors": [g["vector"] for g in bare]}))
    used = sorted({g["ist"] for g in gates if g.get("ist")})
    cpus = snapshot.get("cpus") or []
    owners: dict[tuple[int, int], list[int]] = {}
    for cpu in cpus:
        slots = (cpu.get("tss") or {}).get("ist") or []
        mapped = cpu.get("ist_mapped") or []
        for ist in used:
            value = _int(slots[ist - 1]) if ist <= len(slots) else None
            where = f"cpu {cpu.get('cpu')} tss.ist[{ist - 1}]={slots[ist - 1] if ist <= len(slots) else None}"
            if not value:
                out.append(Incident("ist_missing", f"KML kernel: CPU {cpu.get('cpu')}'s IST{ist} "
                                    "is null but gates use it", cpu=cpu.get("cpu"),
                                    evidence=[evidence("snapshot", where)]))
                continue
            if ist <= len(mapped) and mapped[ist - 1] is False:
                out.append(Incident("ist_missing", f"KML kernel: CPU {cpu.get('cpu')}'s IST{ist} "
                                    f"points to unmapped memory ({value:#x})", cpu=cpu.get("cpu"),
                                    evidence=[evidence("snapshot", where)]))
            owners.setdefault((ist, value), []).append(cpu.get("cpu"))
    for (ist, value), sharing in owners.items():
        if len(sharing) > 1:
            out.append(Incident(
                "ist_missing", f"KML kernel: CPUs {', '.join(map(str, sharing))} share IST{ist} "
                f"stack {value:#x}",
                evidence=[evidence("snapshot", f"cpu {c} tss.ist[{ist - 1}]={value:#x}")
                          for c in sharing[:MAX_LISTED]],
                explanation="Two CPUs taking the same exception at once would push their "
                            "frames onto the same stack."))
    return out


def starvation_risk(task: dict) -> list[Incident]:
    """A kernel-mode task whose next push at CPL 0 can fault (predicted, warning)."""
    sp = _int(task.get("sp"))
    if sp is None:
        return []
    vma = task.get("stack_vma")
    below = task.get("sp_mapped_below")
    if task.get("sp_in_stack_vma") is False:
        what = f"saved sp {sp:#x} is outside its stack VMA"
        if isinstance(vma, list) and len(vma) == 2:
            what += f" [{vma[0]}, {vma[1]})"
    elif isinstance(below, int) and below < STARVATION_MARGIN:
        what = f"saved sp {sp:#x} has only {below} mapped bytes below it"
    else:
        return []
    return [_incident(
        "stack_starvation", task, f"predicted: {_who(task)} runs in kernel mode and its {what}",
        [evidence("snapshot", f"task {task.get('pid')} sp={task.get('sp')} stack_vma={vma} "
                  f"sp_mapped_below={below}")],
        severity="warning", extra={"predicted": True},
        explanation="An exception at CPL 0 pushes its frame on the current stack; when that "
                    "push hits an unmapped page the CPU raises #DF, and without a usable #DF "
                    "stack the machine resets.")]


def _who(task: dict) -> str:
    return f"pid {task.get('pid')} ({task.get('comm')})"


def _incident(kind, task, summary, ev, severity=None, explanation=None, extra=None) -> Incident:
    return Incident(kind, summary, severity=severity, pid=task.get("pid"), comm=task.get("comm"),
                    cpu=task.get("cpu"), evidence=ev, explanation=explanation,
                    extra=extra or {})


#: what the report takes from snapshots through this module (ist_missing and
#: kernel_mode_process reach it through analysis/landing.py and analysis/modes.py)
REPORT_KINDS = ("stack_starvation", "gs_write")


def snapshot_task_incidents(capture) -> list[Incident]:
    """The per-task incidents (starvation risk, GS base) of every snapshot among the inputs."""
    out = []
    for snap in capture.metas("snapshot"):
        if isinstance(snap, dict) and snap.get("tasks"):
            out += [i for i in check_snapshot(snap) if i.kind in REPORT_KINDS]
    return out
