"""analysis/previous_boot.py on the real previous-boot sample (sample_traces/
last-boot-6.12-triple-fault, PROVENANCE.md: bootwork pid 149 wrote "b" to /proc/sysrq-trigger
on CPU 1 after 48 page faults in its region and 100 getppid() calls; reboot=t: triple fault)."""

from __future__ import annotations

import json
import shutil

from kmltrace import capture as capture_mod
from kmltrace.report import build_report
from tests.conftest import SAMPLES

BUNDLE = SAMPLES / "last-boot-6.12-triple-fault"
PID, CPU, WRITE = 149, 1, 1


def _report(path):
    return build_report(capture_mod.load([path]), postmortem=True)


def test_unclean_reset_and_in_flight_write(tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(BUNDLE, copy, ignore=shutil.ignore_patterns("events.*"))
    report = _report(copy)
    unclean = [i for i in report["incidents"] if i["kind"] == "unclean_reset"]
    assert len(unclean) == 1
    assert (unclean[0]["pid"], unclean[0]["cpu"], unclean[0]["severity"]) == \
        (PID, CPU, "critical")
    # no other evidence of a triple fault in this analysis: none claimed, cause unknown
    assert not [i for i in report["incidents"] if i["kind"] == "triple_fault"]
    assert unclean[0]["cause"] is None
    previous = report["previous_boot"]
    assert previous["ended"] == "no shutdown" and previous["lost_cpus"] == []
    cpu1 = next(c for c in previous["cpus"] if c["cpu"] == CPU)
    last = cpu1["last_events"][-1]
    assert (last["event"], last["id"], last["task_pid"]) == ("sys_enter", WRITE, PID)
    assert {"cpu": CPU, "pid": PID, "what": f"sys_enter id={WRITE}"}.items() <= next(
        f for f in report["in_flight"] if f.get("pid") == PID and f["what"] != "on cpu").items()
    faults = next(p for p in previous["last_page_faults"] if p["pid"] == PID)["faults"]
    # bootwork's last faults are its region's last pages, one page apart
    addresses = [int(f["address"], 16) for f in faults]
    assert addresses == list(range(addresses[0], addresses[0] + 4096 * len(faults), 4096))
    assert addresses[-1] == 0x7F9CC4A2F000 + 47 * 4096


def test_lost_cpu_is_said(tmp_path):
    """Synthetic: the sample's manifest as if the kernel had said CPU 0's buffer was lost
    (its pages removed), as -m 512M does for one CPU."""
    copy = tmp_path / "b"
    shutil.copytree(BUNDLE, copy, ignore=shutil.ignore_patterns("events.*"))
    (copy / "ftrace" / "cpu0.raw").write_bytes(b"")
    manifest = json.loads((copy / "bundle.json").read_text())
    manifest["last_boot"]["cpus"]["0"] = "lost: buffer invalid commit"
    (copy / "bundle.json").write_text(json.dumps(manifest))
    report = _report(copy)
    previous = report["previous_boot"]
    assert previous["lost_cpus"] == [0]
    assert previous["notes"] == ["CPU 0: the previous boot's buffer of this CPU was LOST "
                                 "(kernel: 'buffer invalid commit'); what it did last is "
                                 "unknown and the trace is not whole"]
    unclean = next(i for i in report["incidents"] if i["kind"] == "unclean_reset")
    assert unclean["lost_cpus"] == [0] and "CPU(s) 0 lost their buffer" in unclean["summary"]


def test_other_captures_have_no_previous_boot_section():
    other = next(p for p in sorted(SAMPLES.iterdir())
                 if (p / "bundle.json").exists() and not p.name.startswith("last-boot"))
    report = _report(other)
    assert "previous_boot" not in report
    assert not [i for i in report["incidents"] if i["kind"] == "unclean_reset"]


def test_triple_fault_only_with_other_evidence(tmp_path):
    """With the same run's QEMU ``-d cpu_reset`` log as another input, the chains analysis
    finds the triple fault and the previous boot's unclean_reset names it as the cause."""
    copy = tmp_path / "b"
    shutil.copytree(BUNDLE, copy, ignore=shutil.ignore_patterns("events.*"))
    report = build_report(capture_mod.load([copy, copy / "qemu-cpu_reset.log"]),
                          postmortem=True)
    assert [i for i in report["incidents"] if i["kind"] == "triple_fault"]
    ours = [i for i in report["incidents"]
            if i["kind"] == "unclean_reset" and "previous boot" in i["summary"]]
    assert len(ours) == 1 and ours[0]["cause"] == "triple_fault"
    assert "shows a triple fault" in ours[0]["explanation"]
