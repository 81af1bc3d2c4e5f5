"""Committed KVM runs of the lab (sample_traces/lab-*-kvm): without -d int, the reset is seen
by the host (kvm_userspace_exit KVM_EXIT_SHUTDOWN) and in the paused VM's registers."""

import re

import pytest

from kmltrace.capture import load
from kmltrace.formats import guest_memory
from kmltrace.lab import scenarios
from kmltrace.report import build_report
from tests.conftest import SAMPLES

C = scenarios.constants()


def bundle(name):
    return SAMPLES / f"lab-{name}-kvm"


def test_host_saw_the_push_the_pf_injection_and_the_shutdown():
    text = (bundle("starvation") / "kvm.txt").read_text()
    push = scenarios.elf_symbols(bundle("starvation") / "kernel.elf")["starve_push"]
    # this host emulates CPL 0 guest code: the push itself, then the #PF, then the shutdown
    tail = re.findall(r"(kvm_emulate_insn: 0:([0-9a-f]+):|kvm_inj_exception: #PF \((0x[0-9a-f]+)\)"
                      r"|KVM_EXIT_SHUTDOWN)", text)[-3:]
    assert int(tail[0][1], 16) == push
    assert int(tail[1][2], 16) == C["STARVE_PF_ERROR"]
    assert tail[2][0] == "KVM_EXIT_SHUTDOWN"


def test_paused_vm_registers_are_those_of_the_fault():
    state = guest_memory.parse(bundle("starvation") / "vmcore.elf.zst").meta["cpu_state"][0]
    assert int(state["rsp"], 16) == C["STARVE_RSP"] and int(state["cr2"], 16) == C["STARVE_CR2"]


@pytest.mark.parametrize("name", sorted(scenarios.SCENARIOS))
def test_postmortem_reset_only_where_the_scenario_resets(name, tmp_path):
    import shutil

    copy = tmp_path / name   # analysed in a copy: the parquet cache is written beside the data
    shutil.copytree(bundle(name), copy)
    kinds = {i["kind"] for i in build_report(load([copy]), postmortem=True)["incidents"]}
    assert ("triple_fault" in kinds) == scenarios.get(name).reset
