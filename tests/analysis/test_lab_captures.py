"""`kmltrace postmortem --json` on the REAL lab captures committed under sample_traces/lab-*
(QEMU 7.2 runs of the lab's scenario kernels, TCG and KVM, written by `kmltrace lab run`).

What each run must show comes from the scenario's own source: the incident kinds and the
kinds that must be absent from kmltrace.lab.scenarios, the numbers (RSP, CR2, error code,
timer ticks, the GS value) from lab.h through scenarios.constants(), and the instruction
addresses from the labels of the bundle's kernel.elf; never from the analyser.

Under TCG, QEMU's -d int log shows every delivery, so the whole chain is asserted. Under KVM
-d int logs nothing: only the reset (KVM_EXIT_SHUTDOWN in the host's kvm events, the CPU
state of the guest memory dump) and what the host tracepoints and the dump show.
"""

import json
import re
import shutil
from functools import lru_cache

import pytest
from click.testing import CliRunner

from kmltrace.cli import main
from kmltrace.lab import scenarios
from tests.conftest import SAMPLES

C = scenarios.constants()
NAMES = sorted(scenarios.SCENARIOS)
TCG = {n: SAMPLES / f"lab-{n}-tcg" for n in NAMES}
KVM = {n: SAMPLES / f"lab-{n}-kvm" for n in NAMES}
BUNDLES = [*TCG.values(), *KVM.values()]


@lru_cache(maxsize=None)
def _postmortem(path: str) -> str:
    result = CliRunner().invoke(main, ["postmortem", path, "--json"])
    assert result.exit_code == 0, result.output
    return result.stdout


def postmortem(bundle) -> dict:
    if not (bundle / "bundle.json").is_file():
        pytest.fail(f"lab sample {bundle} is missing from the repository")
    return json.loads(_postmortem(str(bundle)))


def incidents(report, kind) -> list[dict]:
    return [i for i in report["incidents"] if i["kind"] == kind]


def kinds(report) -> set[str]:
    return {i["kind"] for i in report["incidents"]}


def label(bundle, name) -> int:
    return scenarios.elf_symbols(bundle / "kernel.elf")[name]


# -- TCG: the whole chain -----------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_tcg_verdicts_are_the_scenarios(name):
    scenario = scenarios.get(name)
    found = kinds(postmortem(TCG[name]))
    assert set(scenario.incidents) <= found, found
    assert not set(scenario.absent) & found, found
    assert ("triple_fault" in found) == scenario.reset


def test_starvation_pf_at_cpl0_below_rsp_then_df_then_reset():
    bundle = TCG["starvation"]
    report = postmortem(bundle)
    assert incidents(report, "stack_starvation")[0]["severity"] == "critical"
    assert incidents(report, "triple_fault")[0]["severity"] == "critical"
    pf, df, reset = report["chain"]
    assert (pf["vector"], pf["cpl"]) == (14, 0)
    assert int(pf["rip"], 16) == label(bundle, "starve_push")
    rsp, cr2 = int(pf["rsp"], 16), int(pf["cr2"], 16)
    assert (rsp, cr2) == (C["STARVE_RSP"], C["STARVE_CR2"])
    assert 0 < rsp - cr2 <= 8                       # just below RSP: the push itself faulted
    assert int(pf["error_code"], 16) == C["STARVE_PF_ERROR"]
    assert pf["stack"] == "same" and pf["delivered"] is False
    assert (df["vector"], df["stack"], df["delivered"]) == (8, "same", False)
    assert reset["shutdown"] is True
    # neither frame was ever pushed: nothing landed in a red zone
    assert "redzone_clobber" not in kinds(report)
    same = {s["vector"]: s for s in report["stacks"] if s["stack"] == "same"}
    assert {v: (s["count"], s["not_pushed"]) for v, s in same.items()} == {14: (1, 1), 8: (1, 1)}


def test_df_ist_double_fault_delivered_is_an_error_not_critical():
    report = postmortem(TCG["df-ist"])
    (df,) = incidents(report, "double_fault")
    assert df["severity"] == "error"
    assert [(e["vector"], e["stack"]) for e in report["chain"]] == [(14, "same"),
                                                                   (8, f"ist{C['IST_INDEX']}")]
    assert incidents(report, "stack_starvation")[0]["severity"] == "error"


def test_pf_ist_fault_handled_on_the_ist_stack_is_no_incident_of_its_own():
    report = postmortem(TCG["pf-ist"])
    assert report["chain"][0]["stack"] == f"ist{C['IST_INDEX']}"
    assert report["chain"][0]["delivered"] is True
    # the frame went to IST 1 and the push then completed: nothing could not be pushed
    assert not {"triple_fault", "double_fault", "stack_starvation", "redzone_clobber"} \
        & kinds(report)


def test_redzone_noist_clobbers_once_per_timer_tick_and_ist_does_not():
    bundle = TCG["redzone-noist"]
    (clobber,) = incidents(postmortem(bundle), "redzone_clobber")
    assert clobber["count"] == C["TIMER_TICKS"]
    # each tick interrupted the wait loop at redzone_wait (pause; cmpl; jb: 11 bytes)
    wait = label(bundle, "redzone_wait")
    for e in clobber["evidence"]:
        vector, ip = re.search(r"vector (\d+) ip=(0x[0-9a-f]+)", e["text"]).groups()
        assert int(vector) == C["TIMER_VECTOR"] and wait <= int(ip, 16) < wait + 11
    assert not incidents(postmortem(TCG["redzone-ist"]), "redzone_clobber")


def test_cpl3_contrast_gives_no_incident_at_all():
    report = postmortem(TCG["cpl3"])
    assert report["incidents"] == []
    assert all(p["mode"] != "kernel" for p in report["processes"])


def test_gs_write_seen_in_the_cpus_own_state():
    (gs,) = incidents(postmortem(TCG["gs-write"]), "gs_write")
    assert f"GS base {C['GS_USER_VALUE']:#x}" in gs["summary"]
    sources = {e["source"].rsplit("/", 1)[-1] for e in gs["evidence"]}
    assert sources == {"qemu.log", "vmcore.elf.zst"}    # the int3 record and the dump


def test_fault_loop_same_pf_same_instruction():
    bundle = TCG["fault-loop"]
    (loop,) = incidents(postmortem(bundle), "fault_loop")
    assert loop["severity"] == "critical"
    assert f"ip={label(bundle, 'loop_push'):#x} address={C['STARVE_CR2']:#x}" in loop["summary"]
    # each #PF went to the IST stack: its frame was pushed, the stack just never grew
    (starving,) = incidents(postmortem(bundle), "stack_starvation")
    assert starving["severity"] == "error"
    assert f"delivered on ist{C['IST_INDEX']}" in starving["summary"]
    assert "could not push" not in starving["summary"]


# -- KVM: the reset and what the host saw -------------------------------------------------------

def test_kvm_starvation_reset_from_kvm_exit_shutdown_and_the_dumped_state():
    bundle = KVM["starvation"]
    report = postmortem(bundle)
    (triple,) = incidents(report, "triple_fault")
    assert triple["severity"] == "critical"
    assert any("KVM_EXIT_SHUTDOWN" in e["text"] and e["source"].endswith("kvm.txt")
               for e in triple["evidence"])
    (starving,) = incidents(report, "stack_starvation")
    assert starving["severity"] == "critical"
    pf = report["chain"][0]
    assert int(pf["rip"], 16) == label(bundle, "starve_push")
    assert (int(pf["rsp"], 16), int(pf["cr2"], 16)) == (C["STARVE_RSP"], C["STARVE_CR2"])


@pytest.mark.parametrize("name", [n for n in NAMES if not scenarios.get(n).reset])
def test_kvm_runs_without_reset_show_none(name):
    found = kinds(postmortem(KVM[name]))
    assert not {"triple_fault", "double_fault", "unclean_reset"} & found
    assert not set(scenarios.get(name).absent) & found


def test_kvm_gs_write_from_the_guest_memory_dump():
    (gs,) = incidents(postmortem(KVM["gs-write"]), "gs_write")
    assert f"GS base {C['GS_USER_VALUE']:#x}" in gs["summary"]
    assert gs["severity"] == "warning"     # the lab guest has one CPU (the host's two are not it)


def test_kvm_cpl3_gives_no_incident():
    assert postmortem(KVM["cpl3"])["incidents"] == []


# -- the verdicts come from the CPU's evidence, not from the kernel's own report ----------------

@pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
def test_same_incidents_without_console_and_scenario_metadata(bundle, tmp_path):
    copy = tmp_path / bundle.name
    shutil.copytree(bundle, copy, ignore=shutil.ignore_patterns("events.*"))
    (copy / "console.log").unlink(missing_ok=True)
    manifest = json.loads((copy / "bundle.json").read_text())
    del manifest["lab"]
    manifest["files"] = [f for f in manifest["files"] if f["path"] != "console.log"]
    (copy / "bundle.json").write_text(json.dumps(manifest))

    def verdicts(report):
        return sorted((i["kind"], i["severity"], i.get("count")) for i in report["incidents"])
    assert verdicts(postmortem(copy)) == verdicts(postmortem(bundle))
