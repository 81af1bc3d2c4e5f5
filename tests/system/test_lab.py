"""Every lab scenario under QEMU TCG: the CPU's evidence shows what the kernel source says.

Expected values come from the scenario kernel's own source: lab.h constants (through
kmltrace.lab.scenarios) and the labels of kernel.S (symbols of the built ELF). The QEMU log is
read here with a small regex of the test's own, not with kmltrace's parser.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kmltrace.formats import guest_memory
from kmltrace.lab import runner, scenarios
from tests.conftest import require, require_binary, require_qemu

RECORD = re.compile(r"^\s*\d+: v=([0-9a-f]+) e=([0-9a-f]+) i=(\d) cpl=(\d) IP=([0-9a-f]+):"
                    r"([0-9a-f]+) pc=[0-9a-f]+ SP=([0-9a-f]+):([0-9a-f]+)(?: CR2=([0-9a-f]+))?",
                    re.M)
C = scenarios.constants()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """All scenarios, each run once under TCG (about 4 s in all)."""
    require_qemu()
    require_binary("gcc")
    base = tmp_path_factory.mktemp("lab")
    out = {}
    for name in scenarios.SCENARIOS:
        result = runner.run(name, accel="tcg", out=base / name)
        out[name] = (Path(result["bundle"]), result)
    return out


def records(bundle: Path) -> list[dict]:
    """Exception/interrupt records of 64-bit code (CS 0008 or 0023) in the QEMU log."""
    text = (bundle / "qemu.log").read_text()
    out = []
    for m in RECORD.finditer(text):
        if m.group(5) not in ("0008", "0023"):
            continue
        out.append({"vector": int(m.group(1), 16), "error": int(m.group(2), 16),
                    "cpl": int(m.group(4)), "rip": int(m.group(6), 16),
                    "rsp": int(m.group(8), 16),
                    "cr2": int(m.group(9), 16) if m.group(9) else None})
    return out


def symbols(bundle: Path) -> dict[str, int]:
    return scenarios.elf_symbols(bundle / "kernel.elf")


def gates(bundle: Path) -> dict[int, int]:
    parsed = guest_memory.parse(bundle / "vmcore.elf.zst")
    assert parsed.errors == []
    return {g["vector"]: g["ist"] for g in parsed.meta["idt"]}


def console(bundle: Path) -> str:
    return (bundle / "console.log").read_text()


def triple_faulted(bundle: Path) -> bool:
    return "Triple fault" in (bundle / "qemu.log").read_text()


def check_gates_and_serial(name, bundle):
    scenario = scenarios.get(name)
    got = gates(bundle)
    for vector, ist in scenario.gates.items():
        assert got[vector] == ist, (name, vector)
    if scenario.serial:
        assert re.search(scenario.serial, console(bundle), re.M), console(bundle)


def test_starvation_pf_at_cpl0_below_rsp_then_df_then_triple_fault(runs):
    bundle, result = runs["starvation"]
    assert result["end"] == "reset"
    pf, df = records(bundle)
    assert (pf["vector"], df["vector"]) == (14, 8)
    assert pf["cpl"] == 0 and pf["rsp"] == C["STARVE_RSP"] and pf["cr2"] == C["STARVE_CR2"]
    assert 0 < pf["rsp"] - pf["cr2"] <= 48         # within the frame the CPU pushes below RSP
    assert pf["error"] == C["STARVE_PF_ERROR"] and pf["rip"] == symbols(bundle)["starve_push"]
    assert df["cpl"] == 0 and df["rip"] == pf["rip"]
    assert triple_faulted(bundle)
    check_gates_and_serial("starvation", bundle)
    assert "KMLTRACE-LAB: END" not in console(bundle)


def test_pf_ist_handled_on_ist_no_reset(runs):
    bundle, result = runs["pf-ist"]
    assert result["end"] == "done"
    (pf,) = records(bundle)
    assert pf["vector"] == 14 and pf["cpl"] == 0 and pf["cr2"] == C["STARVE_CR2"]
    assert not triple_faulted(bundle)
    check_gates_and_serial("pf-ist", bundle)
    tss = guest_memory.parse(bundle / "vmcore.elf.zst").meta["tss"][0]
    assert int(tss["ist"][C["IST_INDEX"] - 1], 16) == symbols(bundle)["ist_stack_top"]


def test_df_ist_double_fault_delivered_no_reset(runs):
    bundle, result = runs["df-ist"]
    assert result["end"] == "done"
    assert [r["vector"] for r in records(bundle)] == [14, 8]
    assert not triple_faulted(bundle)
    check_gates_and_serial("df-ist", bundle)


@pytest.mark.parametrize("name", ["redzone-noist", "redzone-ist"])
def test_redzone_timer_at_cpl0_on_the_user_range_stack(runs, name):
    bundle, result = runs[name]
    assert result["end"] == "done"
    ticks = [r for r in records(bundle) if r["vector"] == C["TIMER_VECTOR"]]
    # at least TIMER_TICKS: one more can land between the last check and cli on a slow host
    assert C["TIMER_TICKS"] <= len(ticks) <= C["TIMER_TICKS"] + 1
    assert all(r["cpl"] == 0 and r["rsp"] == C["REDZONE_RSP"] for r in ticks)
    assert not triple_faulted(bundle)
    check_gates_and_serial(name, bundle)


def test_cpl3_fault_goes_through_rsp0(runs):
    bundle, result = runs["cpl3"]
    assert result["end"] == "done"
    pf, syscall = records(bundle)
    assert pf["vector"] == 14 and pf["cpl"] == 3 and pf["error"] == C["CPL3_PF_ERROR"]
    assert pf["rip"] == symbols(bundle)["user_push"] and pf["cr2"] == C["STARVE_CR2"]
    assert syscall["vector"] == C["SYSCALL_VECTOR"] and syscall["cpl"] == 3
    check_gates_and_serial("cpl3", bundle)


def test_gs_write_leaves_the_user_value_in_gs_base(runs):
    bundle, result = runs["gs-write"]
    assert result["end"] == "done"
    (bp,) = records(bundle)
    assert bp["vector"] == 3 and bp["cpl"] == 0
    log = (bundle / "qemu.log").read_text()
    assert re.search(rf"^GS =0000 0*{C['GS_USER_VALUE']:x} ", log, re.M)
    state = guest_memory.parse(bundle / "vmcore.elf.zst").meta["cpu_state"][0]
    assert int(state["gs_base"], 16) == C["GS_USER_VALUE"]
    assert int(state["kernel_gs_base"], 16) == symbols(bundle)["percpu"]
    check_gates_and_serial("gs-write", bundle)


def test_fault_loop_same_fault_same_instruction_no_reset(runs):
    bundle, result = runs["fault-loop"]
    scenario = scenarios.get("fault-loop")
    assert result["end"] in ("log_cap", "timeout")   # timeout only on a very loaded host
    assert (bundle / "qemu.log").stat().st_size < 4 * scenario.log_cap   # the cap held
    faults = records(bundle)
    assert len(faults) >= 50 and {r["vector"] for r in faults} == {14}
    loop = symbols(bundle)["loop_push"]
    assert faults[0]["rip"] == symbols(bundle)["starve_push"]
    assert {(r["rip"], r["cr2"], r["rsp"]) for r in faults[1:]} == \
        {(loop, C["STARVE_CR2"], C["STARVE_RSP"])}
    assert not triple_faulted(bundle)
    check_gates_and_serial("fault-loop", bundle)


def test_bundle_manifest_and_cli_json(runs, tmp_path):
    bundle, _ = runs["starvation"]
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert manifest["kind"] == "lab" and manifest["lab"]["scenario"]["name"] == "starvation"
    assert manifest["captured"]["accel"] == "tcg"
    paths = {f["path"] for f in manifest["files"]}
    assert {"qemu.log", "console.log", "vmcore.elf.zst", "registers.txt"} <= paths
    kmltrace = [sys.executable, "-m", "kmltrace"]
    out = subprocess.run([*kmltrace, "lab", "run", "cpl3", "-o", str(tmp_path / "b"), "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["bundle"] == str(tmp_path / "b")
    again = subprocess.run([*kmltrace, "lab", "run", "cpl3", "-o", str(tmp_path / "b")],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "not empty" in again.stderr
    usage = subprocess.run([*kmltrace, "lab", "run", "no-such"], capture_output=True,
                           text=True, timeout=60)
    assert usage.returncode == 2


def test_kvm_starvation_resets_when_kvm_boots(tmp_path):
    """Under KVM there is no -d int: the reset shows as the QMP guest-reset shutdown, the
    registers at the end (the VM is paused, not reset), and the host's kvm events."""
    require_qemu()
    require(runner.kvm_usable(), "no usable /dev/kvm")
    result = runner.run("starvation", accel="kvm", out=tmp_path / "k")
    bundle = Path(result["bundle"])
    # KVM counts as available when a lab kernel boots there (issue 5)
    require("KMLTRACE-LAB: scenario=starvation" in console(bundle),
            "a lab kernel does not boot under this KVM")
    assert result["end"] == "reset"
    state = guest_memory.parse(bundle / "vmcore.elf.zst").meta["cpu_state"][0]
    assert int(state["cr2"], 16) == C["STARVE_CR2"] and int(state["rsp"], 16) == C["STARVE_RSP"]
    if os.geteuid() == 0 and Path("/sys/kernel/tracing/events/kvm").is_dir():
        text = (bundle / "kvm.txt").read_text()
        # the last thing this QEMU's vCPU did: the shutdown exit of the triple fault
        assert any("KVM_EXIT_SHUTDOWN" in line for line in text.strip().splitlines()[-5:])


# -- the verdicts: kmltrace's analysis of each run, from the CPU's evidence -------------------

def postmortem(bundle: Path) -> dict:
    from kmltrace.capture import load
    from kmltrace.report import build_report

    return build_report(load([bundle]), postmortem=True)


def kinds(report: dict) -> set[str]:
    return {i["kind"] for i in report["incidents"]}


@pytest.mark.parametrize("name", sorted(scenarios.SCENARIOS))
def test_postmortem_verdicts_match_the_scenario(runs, name):
    bundle, _ = runs[name]
    scenario = scenarios.get(name)
    report = postmortem(bundle)
    found = kinds(report)
    assert set(scenario.incidents) <= found, (name, found)
    assert not (set(scenario.absent) & found), (name, found)


def test_postmortem_starvation_chain_pf_df_reset(runs):
    bundle, _ = runs["starvation"]
    report = postmortem(bundle)
    chain = report["chain"]
    assert [e["vector"] for e in chain[:2]] == [14, 8]
    pf = chain[0]
    assert pf["cpl"] == 0 and int(pf["rip"], 16) == symbols(bundle)["starve_push"]
    assert int(pf["rsp"], 16) == C["STARVE_RSP"] and int(pf["cr2"], 16) == C["STARVE_CR2"]
    assert int(pf["error_code"], 16) == C["STARVE_PF_ERROR"]
    assert pf["stack"] == "same"          # gate 14 has IST 0 in the dump's IDT
    assert pf["symbol"] == "starve_push"  # the manifest's vmlinux: the bundle's kernel.elf
    starvation = [i for i in report["incidents"] if i["kind"] == "stack_starvation"]
    assert starvation and starvation[0]["severity"] == "critical"


def test_postmortem_ist_scenarios_name_the_ist_stack(runs):
    assert postmortem(runs["pf-ist"][0])["chain"][0]["stack"] == f"ist{C['IST_INDEX']}"
    df = postmortem(runs["df-ist"][0])["chain"]
    assert [(e["vector"], e["stack"]) for e in df[:2]] == [(14, "same"),
                                                           (8, f"ist{C['IST_INDEX']}")]


@pytest.mark.parametrize("name", sorted(scenarios.SCENARIOS))
def test_same_incidents_without_console_and_scenario_metadata(runs, name, tmp_path):
    """The verdict comes from the CPU's evidence: the kernel's own serial report and the
    scenario's description in the manifest are not needed."""
    bundle, _ = runs[name]
    copy = tmp_path / name
    shutil.copytree(bundle, copy, ignore=shutil.ignore_patterns("events.*"))
    (copy / "console.log").unlink(missing_ok=True)
    manifest = json.loads((copy / "bundle.json").read_text())
    del manifest["lab"]
    manifest["files"] = [f for f in manifest["files"] if f["path"] != "console.log"]
    (copy / "bundle.json").write_text(json.dumps(manifest))
    stripped = postmortem(copy)
    assert sorted(kinds(stripped)) == sorted(kinds(postmortem(bundle)))


# -- kmltrace collect --vm: the same capture for a user's own QEMU command line ---------------

def test_collect_vm_keeps_a_triple_faulted_guest_paused_and_dumps_it(tmp_path):
    require_qemu()
    from kmltrace.lab import build

    kernel = build.build_kernel(scenarios.get("starvation").define)
    qemu = ["qemu-system-x86_64", "-accel", "tcg", "-m", "16M", "-nodefaults",
            "-kernel", str(kernel)]
    if runner.QBOOT.is_file():
        qemu[1:1] = ["-bios", str(runner.QBOOT)]
    out = subprocess.run([sys.executable, "-m", "kmltrace", "collect", "--vm", "--duration", "20",
                          "-o", str(tmp_path / "vm"), "--json", "--", *qemu],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["stop_reason"] == "reset" and result["accel"] == "tcg"
    assert {"qemu.log", "vmcore.elf", "registers.txt"} <= set(result["files"])
    bundle = Path(result["bundle"])
    assert re.search(rf"CR2=0*{C['STARVE_CR2']:x}", (bundle / "registers.txt").read_text())
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert manifest["kind"] == "collect" and manifest["captured"]["vm"] is True
    assert {"triple_fault", "stack_starvation"} <= kinds(postmortem(bundle))


def test_collect_vm_refuses_a_command_that_is_not_qemu(tmp_path):
    out = subprocess.run([sys.executable, "-m", "kmltrace", "collect", "--vm", "-o",
                          str(tmp_path / "x"), "--", "true"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "QEMU" in out.stderr
    none = subprocess.run([sys.executable, "-m", "kmltrace", "collect", "--vm"],
                          capture_output=True, text=True, timeout=60)
    assert none.returncode == 1 and "--vm needs a QEMU command line" in none.stderr
