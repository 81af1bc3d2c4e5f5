"""Every analysis on captures that lack columns or events: a console log alone, a snapshot
alone, a QEMU log of a mainline kernel (kernel addresses near 2**64), a host kvm trace, and a
SYNTHETIC capture with no fault at all but a kernel-mode process taking timer interrupts. No
analysis may fail with an internal error; the verdicts stay right."""

import pytest

from kmltrace.capture import load
from kmltrace.report import build_report
from tests.analysis.synthetic import capture, frame
from tests.conftest import SAMPLES

REAL = [SAMPLES / "console-public" / "pop-os-4029-double-fault.txt",
        SAMPLES / "snapshot-debian-6.1-guest" / "snapshot.json",
        SAMPLES / "linux-6.1-double-fault" / "qemu-kml.log",
        SAMPLES / "kvm-public" / "nos-11-vmx-triple-fault.txt",
        SAMPLES / "qemu-tiny" / "clean-int.log"]


def internal_errors(report):
    return [a for a in report["analyses"] if "internal error" in (a.get("note") or "")]


@pytest.mark.parametrize("path", REAL, ids=[p.name for p in REAL])
def test_real_inputs_lacking_columns_run_every_analysis(path):
    report = build_report(load([str(path)]), postmortem=True)
    assert internal_errors(report) == []
    assert [i["errors"] for i in report["inputs"]] == [[]]


def test_snapshot_alone_and_clean_qemu_log_give_no_incident():
    for path in (REAL[1], REAL[4]):
        assert build_report(load([str(path)]), postmortem=True)["incidents"] == []


@pytest.mark.parametrize("idt", [None, 0], ids=["kml-layout", "snapshot-idt-no-ist"])
def test_no_faults_kernel_mode_process_with_timer_interrupts(idt):
    # a KML kernel (manifest), a process exec'ing /trusted/prog, two timer interrupts while it
    # runs, and no page fault event anywhere: the faults analysis has nothing to read
    rows = [{"ts_ns": 1000, "cpu": 0, "pid": 100, "comm": "prog", "event": "sched_process_exec",
             "system": "sched", "filename": "/trusted/prog"}]
    rows += [{"ts_ns": 2000 + i, "cpu": 0, "pid": 100, "comm": "prog",
              "event": "local_timer_entry", "system": "irq_vectors", "vector": 0xEC}
             for i in range(2)]
    kml = {"path": "synthetic-bundle", "kind": "collect", "captured": {"cpus": 1},
           "kernel": {"release": "kml-synthetic", "kml": True, "kml_evidence": ["synthetic"]}}
    # with a snapshot IDT whose gates have no IST, the starvation prediction runs too
    meta = None if idt is None else {"snapshot": {"idt": [{"vector": v, "ist": idt}
                                                           for v in range(256)]}}
    report = build_report(capture(frame(rows), bundles=[kml], meta=meta), postmortem=True)
    assert internal_errors(report) == []
    faults = next(a for a in report["analyses"] if a["name"] == "faults")
    assert faults["ran"] is False                       # said by name, not crashed
    kinds = sorted(i["kind"] for i in report["incidents"])
    # no fault means no starvation; the interrupts carry no RSP, so no frame is known to
    # have landed on the process's own stack
    assert kinds == (["kernel_mode_process"] if idt is None else ["ist_missing", "kernel_mode_process"])
