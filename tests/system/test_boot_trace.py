"""The whole boot-trace cycle on Debian's 6.12 kernel under QEMU TCG (tests/system/
boot_trace_guest.py): events in the boot-mapped instance, bootwork, a real triple fault
(``reboot=t`` + sysrq-b), the second boot saves the instance, kmltrace reads the bundle.

Expected values come from bootwork's source and its console line (PAGES page faults in its
region, CALLS getppid() calls, then write(2) of "b" to /proc/sysrq-trigger, syscall 1 on
x86_64) and from QEMU's own cpu_reset log ("Triple fault"); never from kmltrace.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import require, require_qemu
from tests.system import boot_trace_guest as guest_mod

pytestmark = pytest.mark.system

GETPPID, WRITE = 110, 1


def _kmltrace(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kmltrace", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def guest():
    require_qemu()
    try:
        return guest_mod.build(log=lambda m: print(m, file=sys.stderr))
    except (RuntimeError, subprocess.CalledProcessError) as e:
        require(False, f"cannot build the Debian 6.12 guest: {e}")


def _cycle(guest, tmp_path_factory, name, **kw):
    from kmltrace.collectors.boot_trace import bundle_from_saved

    work = tmp_path_factory.mktemp(name)
    cycle = guest_mod.run_cycle(guest, work / "run", **kw)
    bundle = work / "bundle"
    bundle_from_saved(cycle.saved, bundle, reader="guest minimal reader (bootsave)")
    result = _kmltrace("postmortem", "--json", bundle)
    assert result.returncode == 0, result.stderr
    return cycle, bundle, json.loads(result.stdout)


@pytest.fixture(scope="module")
def crashed(guest, tmp_path_factory):
    return _cycle(guest, tmp_path_factory, "crash", crash=True, memory="1G")


def test_triple_fault_cycle(crashed, tmp_path):
    cycle, bundle, report = crashed
    work = cycle.bootwork
    assert work["end"] == "crash" and work["pages"] == guest_mod.PAGES
    # QEMU says the first boot ended by a triple fault (kmltrace did not read this log)
    assert kernel_triple_faults(cycle.qemu_log) == 1

    # the workload's last action is in flight on its CPU: write(2), entered, never exited
    flights = [f for f in report["in_flight"] if f.get("pid") == work["pid"]]
    assert {"what": f"sys_enter id={WRITE}"}.items() <= next(
        f for f in flights if f["what"].startswith("sys_enter")).items()
    cpu = next(f["cpu"] for f in flights if f["what"] == "on cpu")
    assert any(f["what"] == f"sys_enter id={WRITE}" and f["cpu"] == cpu
               and f.get("on_cpu", True) for f in flights)
    previous = report["previous_boot"]
    assert previous["ended"] == "no shutdown" and previous["lost_cpus"] == []
    last_syscall = [e for e in next(c for c in previous["cpus"] if c["cpu"] == cpu)["last_events"]
                    if e["event"] in ("sys_enter", "sys_exit")][-1]
    assert (last_syscall["event"], last_syscall["id"], last_syscall["task_pid"]) == \
        ("sys_enter", WRITE, work["pid"])

    unclean = [i for i in report["incidents"] if i["kind"] == "unclean_reset"]
    assert len(unclean) == 1 and unclean[0]["severity"] == "critical"
    assert unclean[0]["pid"] == work["pid"] and unclean[0]["cpu"] == cpu
    assert not [i for i in report["incidents"] if i["kind"] == "triple_fault"]

    # exact counts from kmltrace's own event table
    table = tmp_path / "events.parquet"
    result = _kmltrace("ingest", bundle, "-o", table)
    assert result.returncode == 0, result.stderr
    events = pl.read_parquet(table).filter(pl.col("pid") == work["pid"])
    region = (pl.col("address") >= work["region"]) & \
        (pl.col("address") < work["region"] + work["pages"] * 4096)
    assert events.filter((pl.col("event") == "page_fault_user") & region).height == \
        guest_mod.PAGES
    assert events.filter((pl.col("event") == "sys_enter") & (pl.col("id") == GETPPID)).height \
        == guest_mod.CALLS
    assert events.filter((pl.col("event") == "sys_exit") & (pl.col("id") == GETPPID)).height \
        == guest_mod.CALLS


def test_preserved_text_matches_raw_pages(crashed):
    """The kernel's own text of the preserved buffer ("id=0x6e (110)", <INVALID-SIZE>) gives
    the same counts as the raw pages (formats/fields.py hexdec entries)."""
    from kmltrace.formats.sniff import parse_file

    cycle, bundle, _ = crashed
    text = parse_file(Path(bundle) / "trace.txt").events.filter(
        pl.col("pid") == cycle.bootwork["pid"])
    assert text.filter((pl.col("event") == "sys_enter") & (pl.col("id") == GETPPID)).height \
        == guest_mod.CALLS
    region = (pl.col("address") >= cycle.bootwork["region"]) & \
        (pl.col("address") < cycle.bootwork["region"] + guest_mod.PAGES * 4096)
    assert text.filter((pl.col("event") == "page_fault_user") & region).height == \
        guest_mod.PAGES


def test_clean_poweroff_raises_no_unclean_reset(guest, tmp_path_factory):
    cycle, _, report = _cycle(guest, tmp_path_factory, "poweroff", crash=False, memory="1G")
    assert cycle.bootwork["end"] == "exit"
    assert kernel_triple_faults(cycle.qemu_log) == 0
    assert report["previous_boot"]["ended"].startswith("shutdown")
    assert not [i for i in report["incidents"] if i["kind"] == "unclean_reset"]


def test_lost_cpu_is_reported(guest, tmp_path_factory):
    """-m 512M: reserve_mem's default placement is overwritten across the reset for a CPU;
    the kernel says 'buffer invalid commit' and the report says the CPU was lost."""
    cycle, _, report = _cycle(guest, tmp_path_factory, "m512", crash=True, memory="512M")
    said = {int(c) for c in guest_mod_lost(cycle)}
    assert said, "the kernel reported no lost CPU buffer at 512M this time"
    previous = report["previous_boot"]
    assert set(previous["lost_cpus"]) == said
    assert all("LOST" in note for note in previous["notes"])
    unclean = next(i for i in report["incidents"] if i["kind"] == "unclean_reset")
    assert unclean["lost_cpus"] == sorted(said) and "lost their buffer" in unclean["summary"]


def kernel_triple_faults(qemu_log: str) -> int:
    """QEMU's ``-d cpu_reset`` "Triple fault" lines followed by a 64-bit CPU state (the
    kernel). SeaBIOS reboots itself by a triple fault in 32-bit mode after every warm reset
    (its dump shows ``CS32`` and an empty IDT at 0xf61be): those are not counted."""
    lines = qemu_log.splitlines()
    count = 0
    for i, line in enumerate(lines):
        if line.startswith("Triple fault"):
            dump = lines[i + 1:i + 30]
            if any(" CS64 " in d for d in dump if d.startswith("CS =")):
                count += 1
    return count


def guest_mod_lost(cycle) -> list[str]:
    """CPUs the second boot's kernel log calls lost (read from the saved dmesg, not kmltrace)."""
    import re
    dmesg = (cycle.saved / "dmesg.txt").read_text()
    return re.findall(r"Ring buffer boot meta \[(\d+)\] buffer invalid commit", dmesg)
