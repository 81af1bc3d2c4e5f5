"""Bad input for the boot-mapped instance reader and arming (collectors/boot_trace.py).

The saved instances are the real previous-boot sample (sample_traces/last-boot-6.12-*) with
its kernel log or pages changed as labelled: synthetic variants of real data.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kmltrace.collectors import boot_trace
from kmltrace.errors import KmltraceError, RefusedError
from tests.conftest import SAMPLES, TRACEFS, require, require_tracefs

SAMPLE = next(iter(sorted(SAMPLES.glob("last-boot-6.12-*"))), None)


@pytest.fixture
def saved(tmp_path) -> Path:
    """A copy of the real sample in the saved-instance layout (ftrace/, dmesg.txt)."""
    assert SAMPLE is not None, "sample_traces/last-boot-6.12-* is missing"
    out = tmp_path / "saved"
    shutil.copytree(SAMPLE / "ftrace", out / "ftrace")
    shutil.copyfile(SAMPLE / "dmesg.txt", out / "dmesg.txt")
    return out


def test_real_sample_bundles(saved, tmp_path):
    result = boot_trace.bundle_from_saved(saved, tmp_path / "b")
    assert result["cpus"] == {"0": "previous_boot", "1": "previous_boot"}
    assert result["warnings"] == []
    # 6.12's last_boot_info: text delta and data delta, decimal bytes
    assert isinstance(result["last_boot_info"]["text_delta"], int)


def test_current_boot_is_refused(saved, tmp_path):
    """Synthetic: the kernel log of a boot whose instance holds its own events (the mapping
    line, no 'from previous boot')."""
    dmesg = saved / "dmesg.txt"
    dmesg.write_text("\n".join(line for line in dmesg.read_text().splitlines()
                               if "Ring buffer" not in line))
    with pytest.raises(RefusedError, match="holds the current boot"):
        boot_trace.bundle_from_saved(saved, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_no_kernel_log_is_refused(saved, tmp_path):
    (saved / "dmesg.txt").write_text("")
    with pytest.raises(RefusedError, match="cannot tell which boot"):
        boot_trace.bundle_from_saved(saved, tmp_path / "b")


def test_empty_instance_is_refused(saved, tmp_path):
    """Synthetic: the previous-boot messages, but no page in any trace_pipe_raw."""
    for raw in (saved / "ftrace").glob("cpu*.raw"):
        raw.write_bytes(b"")
    with pytest.raises(RefusedError, match="is empty"):
        boot_trace.bundle_from_saved(saved, tmp_path / "b")


def test_not_a_saved_instance(tmp_path):
    with pytest.raises(KmltraceError, match="header_page"):
        boot_trace.bundle_from_saved(tmp_path, tmp_path / "b")


def test_lost_cpu_is_a_warning(saved, tmp_path):
    """Synthetic: CPU 1's line as the kernel prints it when the buffer did not survive."""
    dmesg = saved / "dmesg.txt"
    dmesg.write_text(dmesg.read_text().replace(
        "Ring buffer meta [1] is from previous boot!",
        "Ring buffer boot meta [1] buffer invalid commit"))
    result = boot_trace.bundle_from_saved(saved, tmp_path / "b")
    assert result["cpus"]["1"] == "lost: buffer invalid commit"
    assert result["warnings"] == ["CPU 1: its buffer from the previous boot was lost (buffer "
                                  "invalid commit): its last events are unknown"]


@pytest.mark.parametrize("release", ["6.1.0-56-cloud-amd64", "6.11.9", "5.15.0"])
def test_old_kernels_are_refused_first(release, tmp_path):
    # refused before tracefs is touched (root is a directory that does not exist)
    for call in (lambda: boot_trace.arm(root=tmp_path / "none", release=release),
                 lambda: boot_trace.read_last_boot(tmp_path / "b", root=tmp_path / "none",
                                                   release=release)):
        with pytest.raises(RefusedError, match=r"needs Linux >= 6\.12"):
            call()


def test_instance_holding_previous_boot_is_not_armed(tmp_path, monkeypatch):
    """Synthetic tracefs tree: arming would write into the previous boot's data."""
    inst = tmp_path / "instances" / "boot_map"
    (inst / "per_cpu" / "cpu0").mkdir(parents=True)
    (inst / "last_boot_info").write_text("text delta:\t0\ndata delta:\t0\n")
    monkeypatch.setattr(boot_trace.metadata, "_dmesg",
                        lambda: "Ring buffer meta [0] is from previous boot!\n")
    with pytest.raises(RefusedError, match="--last-boot"):
        boot_trace.arm(root=tmp_path, release="6.12.95")


def test_this_machine_says_it_has_no_boot_instance():
    """This kernel (or CI's) has no boot-mapped instance: both verbs say so, exit 1."""
    require_tracefs()
    # like every system test: a skip here, a failure under KMLTRACE_REQUIRE_SYSTEM=1
    require(not boot_trace.boot_instances(TRACEFS),
            "this machine has a boot-mapped instance: the refusal cannot be seen here")
    for flag in ("--arm-boot-trace", "--last-boot"):
        result = subprocess.run([sys.executable, "-m", "kmltrace", "collect", flag],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 1
        text = result.stderr.strip()
        assert "Traceback" not in text
        old = boot_trace.release_tuple(__import__("os").uname().release) < (6, 12)
        assert ("needs Linux >= 6.12" if old else "no boot-mapped ftrace instance") in text
        if flag == "--arm-boot-trace" and not old:
            assert "reserve_mem=12M:4096:trace trace_instance=boot_map@trace" in text


def test_read_last_boot_from_an_instance_tree(tmp_path):
    """Synthetic tracefs tree holding the real sample's files where 6.12 puts them
    (instances/boot_map/per_cpu/cpuN/trace_pipe_raw ...): --last-boot's reader gives the same
    bundle as the guest's minimal reader did."""
    assert SAMPLE is not None
    inst = tmp_path / "tracefs" / "instances" / "boot_map"
    ftrace = SAMPLE / "ftrace"
    for fmt in ftrace.glob("events/*/*/format"):
        dest = inst / fmt.relative_to(ftrace)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(fmt, dest)
        (dest.parent / "enable").write_text("0\n")
    for name in ("header_page", "header_event"):
        shutil.copyfile(ftrace / name, inst / "events" / name)
    shutil.copyfile(ftrace / "trace_clock", inst / "trace_clock")
    shutil.copyfile(ftrace / "last_boot_info", inst / "last_boot_info")
    shutil.copyfile(SAMPLE / "trace.txt", inst / "trace")
    for raw in ftrace.glob("cpu*.raw"):
        cpu = inst / "per_cpu" / raw.stem
        cpu.mkdir(parents=True)
        shutil.copyfile(raw, cpu / "trace_pipe_raw")
        shutil.copyfile(ftrace / "stats" / raw.stem, cpu / "stats")
    result = boot_trace.read_last_boot(tmp_path / "b", root=tmp_path / "tracefs",
                                       release="6.12.95+deb12-cloud-amd64",
                                       dmesg=(SAMPLE / "dmesg.txt").read_text())
    assert result["cpus"] == {"0": "previous_boot", "1": "previous_boot"}
    for raw in ftrace.glob("cpu*.raw"):
        assert (tmp_path / "b" / "ftrace" / raw.name).read_bytes() == raw.read_bytes()
    import json
    manifest = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert manifest["kind"] == "last_boot"
    assert manifest["last_boot"]["mapped"]["instance"] == "boot_map"


def test_arm_enables_the_kml_events(tmp_path, monkeypatch):
    """Synthetic tracefs tree of a fresh boot (the mapping line, no previous-boot line)."""
    inst = tmp_path / "instances" / "boot_map"
    (inst / "per_cpu" / "cpu0").mkdir(parents=True)
    (inst / "last_boot_info").write_text("")
    (inst / "tracing_on").write_text("0\n")
    for ev in ("exceptions/page_fault_user", "raw_syscalls/sys_enter", "sched/sched_switch"):
        (inst / "events" / ev).mkdir(parents=True)
        (inst / "events" / ev / "enable").write_text("0\n")
    for system in ("exceptions", "raw_syscalls"):
        (inst / "events" / system / "enable").write_text("0\n")
    monkeypatch.setattr(boot_trace.metadata, "_dmesg", lambda: (
        "Tracing: mapped boot instance boot_map at physical memory 0x000000003de00000 of "
        "size 0xc00000\n"))
    result = boot_trace.arm(root=tmp_path, release="6.12.95")
    assert result["instance"] == "boot_map"
    assert {"exceptions", "raw_syscalls", "sched/sched_switch"} <= set(result["enabled_now"])
    assert (inst / "events" / "sched" / "sched_switch" / "enable").read_text() == "1"
    assert (inst / "tracing_on").read_text() == "1"
    assert "<...>" in result["survives"]
    assert "irq_vectors" in result["missing"]
