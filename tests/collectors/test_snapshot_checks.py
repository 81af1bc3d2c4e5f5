"""KML checks on decoded snapshot structures.

SYNTHETIC: these snapshots are built by hand from the KML facts of the project brief (no KML
kernel runs on this machine): pt_regs->cs 0x7fff0013 marks a kernel-mode process (0x13 as
ptrace and cores show it), TIF_KU is thread-flag bit 31, and KML's IDT puts every ordinary
gate on IST 5, #DF on IST 1, NMI on IST 2, #DB/#BP on IST 3, #MC on IST 4.  The mainline
layout (#DF 1, NMI 2, #DB 3, #MC 4, #VC 5, everything else 0) is what the real Debian guest
of tests/system/test_snapshot.py shows.
"""

from __future__ import annotations

import copy

import pytest

from kmltrace.analysis.snapshot_checks import (STARVATION_MARGIN, check_snapshot, kml_evidence,
                                               task_mode)

KML_IST = {8: 1, 2: 2, 1: 3, 3: 3, 18: 4}
MAINLINE_IST = {8: 1, 2: 2, 1: 3, 18: 4, 29: 5}
PER_CPU = [0xFFFF888007800000, 0xFFFF888007900000]


def idt(layout: dict[int, int], ordinary_ist: int) -> list[dict]:
    return [{"vector": v, "handler": hex(0xFFFFFFFF81000000 + 16 * v), "selector": "0x10",
             "type": 14, "dpl": 0, "present": True, "ist": layout.get(v, ordinary_ist)}
            for v in range(256)]


def cpu(n: int) -> dict:
    tops = [0xFFFFFE0000000000 + n * 0x40000 + 0x3000 * i for i in range(1, 6)]
    return {"cpu": n, "tss": {"sp0": hex(0xFFFFFE0000003000), "sp1": "0x0", "sp2": "0x0",
                              "ist": [hex(t) for t in tops] + ["0x0", "0x0"]},
            "ist_mapped": [True] * 5 + [False, False], "gs_base": hex(PER_CPU[n])}


def task(pid, mode, **fields) -> dict:
    out = {"pid": pid, "tgid": pid, "comm": f"t{pid}", "mode": mode, "cpu": 0,
           "evidence": [f"synthetic {mode}"]}
    out.update(fields)
    return out


def snapshot(kml=True, layout=None, tasks=()) -> dict:
    layout = KML_IST if layout is None else layout
    return {"kernel": {"release": "4.0.0-kml" if kml else "6.1.0", "kml": kml, "cpus": 2},
            "cpus": [cpu(0), cpu(1)], "idt": idt(layout, 5 if kml else 0),
            "tasks": list(tasks)}


def kinds(incidents) -> list[str]:
    return sorted(i.kind for i in incidents)


# -- KML detection -----------------------------------------------------------------------------

def test_kml_detected_from_the_release_the_symbols_and_the_ordinary_gates():
    kml, why = kml_evidence("4.0.0-kml", [], [])
    assert kml and why == ["release 4.0.0-kml"]
    kml, why = kml_evidence("6.1.0", ["kml_call_entry", "kml_switch_stack"], [])
    assert kml and why == ["symbol kml_call_entry", "symbol kml_switch_stack"]
    kml, why = kml_evidence("6.1.0", [], idt(KML_IST, 5))
    assert kml and why == ["ordinary gates use an IST: #PF IST 5, timer (0xec) IST 5"]


def test_vc_on_ist5_alone_is_not_kml():
    # recent mainline puts #VC on IST 5 (the real Debian guest does)
    assert kml_evidence("6.1.0-56-cloud-amd64", [], idt(MAINLINE_IST, 0)) == (False, [])


# -- modes -------------------------------------------------------------------------------------

@pytest.mark.parametrize("cs, flags, kthread, kml, mode", [
    (0x7FFF0013, 0, False, True, "kernel"),     # KML's marker in pt_regs
    (0x13, 0, False, True, "kernel"),           # as ptrace and cores show it
    (0x33, 1 << 31, False, True, "kernel"),     # TIF_KU set
    (0x33, 1 << 31, False, False, "user"),      # bit 31 means nothing on mainline
    (0x33, 0, False, True, "user"),
    (0x23, 0, False, False, "user"),            # compat
    (None, 0, True, True, "kthread"),
    (0x10, 0, False, False, "unknown"),
])
def test_task_mode(cs, flags, kthread, kml, mode):
    got, why = task_mode(cs, flags, kthread, kml)
    assert got == mode
    assert why or mode == "unknown"


# -- ist_missing -------------------------------------------------------------------------------

def test_kml_layout_has_no_ist_missing():
    assert check_snapshot(snapshot()) == []


def test_mainline_layout_is_not_checked_for_ist():
    assert check_snapshot(snapshot(kml=False, layout=MAINLINE_IST)) == []


def test_kml_pf_and_timer_without_ist():
    snap = snapshot(layout={**KML_IST, 14: 0, 0xEC: 0})
    [incident] = check_snapshot(snap)
    assert incident.kind == "ist_missing" and incident.severity == "error"
    assert incident.extra["vectors"] == [14, 0xEC]
    assert "#PF" in incident.summary and "timer (0xec)" in incident.summary


def test_not_present_gate_without_ist_is_fine():
    snap = snapshot()
    snap["idt"][0x80].update(ist=0, present=False)
    assert check_snapshot(snap) == []


def test_null_unmapped_and_shared_ist5():
    null = snapshot()
    null["cpus"][1]["tss"]["ist"][4] = "0x0"
    [incident] = check_snapshot(null)
    assert (incident.kind, incident.cpu) == ("ist_missing", 1)
    assert "IST5 is null" in incident.summary

    unmapped = snapshot()
    unmapped["cpus"][0]["ist_mapped"][4] = False
    [incident] = check_snapshot(unmapped)
    assert (incident.kind, incident.cpu) == ("ist_missing", 0)
    assert "unmapped" in incident.summary

    shared = snapshot()
    shared["cpus"][1]["tss"]["ist"][4] = shared["cpus"][0]["tss"]["ist"][4]
    [incident] = check_snapshot(shared)
    assert incident.summary.startswith("KML kernel: CPUs 0, 1 share IST5")


def test_unused_null_ist_slots_are_fine():
    # IST6 and IST7 are null on every layout and no gate uses them
    snap = snapshot()
    assert snap["cpus"][0]["tss"]["ist"][5:] == ["0x0", "0x0"]
    assert check_snapshot(snap) == []


# -- kernel-mode tasks -------------------------------------------------------------------------

STACK = ["0x7ffd0000000", "0x7ffd0021000"]


def kernel_task(pid=100, **fields):
    base = dict(cs="0x7fff0013", sp="0x7ffd0010000", stack_vma=STACK, sp_in_stack_vma=True,
                sp_mapped_below=8192, gs_base=hex(PER_CPU[0]))
    base.update(fields)
    return task(pid, "kernel", **base)


def test_kernel_mode_process_is_reported_as_info():
    [incident] = check_snapshot(snapshot(tasks=[kernel_task(), task(2, "kthread"),
                                                task(300, "user", cs="0x33")]))
    assert (incident.kind, incident.severity, incident.pid) == ("kernel_mode_process", "info", 100)


def test_starvation_risk_sp_outside_stack_vma():
    snap = snapshot(tasks=[kernel_task(sp="0x7ffcfff0000", sp_in_stack_vma=False)])
    assert kinds(check_snapshot(snap)) == ["kernel_mode_process", "stack_starvation"]
    starving = [i for i in check_snapshot(snap) if i.kind == "stack_starvation"][0]
    assert starving.severity == "warning" and starving.extra["predicted"]
    assert "outside its stack VMA" in starving.summary


def test_starvation_risk_close_to_an_unmapped_page():
    close = snapshot(tasks=[kernel_task(sp_mapped_below=STARVATION_MARGIN - 1)])
    assert kinds(check_snapshot(close)) == ["kernel_mode_process", "stack_starvation"]
    roomy = snapshot(tasks=[kernel_task(sp_mapped_below=STARVATION_MARGIN)])
    assert kinds(check_snapshot(roomy)) == ["kernel_mode_process"]


def test_user_task_near_an_unmapped_page_is_no_risk():
    # a user-mode push that faults is an ordinary #PF from CPL 3 on the kernel stack
    snap = snapshot(tasks=[task(300, "user", cs="0x33", sp="0x7ffd0010000",
                                sp_in_stack_vma=False, sp_mapped_below=0)])
    assert check_snapshot(snap) == []


def test_gs_write_when_the_saved_gs_base_is_not_a_per_cpu_base():
    smp = snapshot(tasks=[kernel_task(gs_base="0x0")])
    gs = [i for i in check_snapshot(smp) if i.kind == "gs_write"]
    assert [(i.severity, i.pid) for i in gs] == [("error", 100)]

    up = copy.deepcopy(smp)
    up["kernel"]["cpus"] = 1
    up["cpus"] = up["cpus"][:1]
    assert [i.severity for i in check_snapshot(up) if i.kind == "gs_write"] == ["warning"]

    other_cpu = snapshot(tasks=[kernel_task(gs_base=hex(PER_CPU[1]))])
    assert kinds(check_snapshot(other_cpu)) == ["kernel_mode_process"]


def test_incidents_are_json_with_contract_fields():
    snap = snapshot(layout={**KML_IST, 14: 0}, tasks=[kernel_task(gs_base="0x0")])
    for incident in check_snapshot(snap):
        out = incident.to_json()
        assert {"kind", "severity", "summary", "evidence"} <= set(out)
        assert all(e["source"] == "snapshot" for e in out["evidence"])
