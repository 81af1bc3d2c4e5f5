"""Host KVM tracepoints: a real VMX TRIPLE_FAULT exit quoted in a public report
(sample_traces/kvm-public) and, labelled synthetic, the SVM and userspace-exit forms as the
kernel's TP_printk formats print them (no public sample found)."""

from __future__ import annotations

from kmltrace import capture as capture_mod
from kmltrace.analysis import kvm
from kmltrace.analysis.chains import analyse_chains
from kmltrace.analysis.events import merged_events
from tests.conftest import SAMPLES

KVM = SAMPLES / "kvm-public"


def _load(*paths):
    cap = capture_mod.load([str(p) for p in paths])
    return cap, merged_events(cap)


def test_vmx_triple_fault_exit_from_a_real_host_trace():
    cap, events = _load(KVM / "nos-11-vmx-triple-fault.txt")
    rows = kvm.kvm_rows(events)
    assert rows["exit_reason"].to_list() == ["TRIPLE_FAULT"]
    assert rows["guest_rip"].to_list() == [0x81DD]
    downs = kvm.shutdowns(rows)
    assert downs.height == 1 and downs["pid"][0] == 13868
    result = analyse_chains(events, cap)
    (incident,) = result.incidents
    assert incident.kind == "triple_fault" and incident.severity == "critical"
    assert "TRIPLE_FAULT" in incident.summary and "0x81dd" in incident.summary
    assert result.chains[0][-1]["rip"] == "0x81dd"


# synthetic (labelled): tracefs text in the formats of arch/x86/kvm/trace.h (6.x)
SYNTHETIC = """\
# tracer: nop
#
 qemu-system-x86-4242  [001] d..1.   100.000100: kvm_inj_exception: #PF (0x2)
 qemu-system-x86-4242  [001] d..1.   100.000200: kvm_inj_exception: #DF (0x0)
 qemu-system-x86-4242  [001] d..1.   100.000300: kvm_exit: vcpu 0 reason shutdown rip 0xffffffff81000010 info1 0x0000000000000000 info2 0x0000000000000000 intr_info 0x00000000 error_code 0x00000000
 qemu-system-x86-4242  [001] .....   100.000400: kvm_userspace_exit: reason KVM_EXIT_SHUTDOWN (8)
 qemu-system-x86-4242  [001] d..1.   100.000500: kvm_exit: vcpu 0 reason EXCEPTION_NMI rip 0x1000 info1 0x0000000000000000 info2 0x0000000000000000 intr_info 0x80000b0e error_code 0x00000002
"""


def test_svm_shutdown_and_userspace_exit(tmp_path):
    path = tmp_path / "kvm.txt"
    path.write_text(SYNTHETIC)
    cap, events = _load(path)
    rows = kvm.kvm_rows(events)
    assert kvm.exit_reason_counts(rows) == {"shutdown": 1, "EXCEPTION_NMI": 1}
    downs = kvm.shutdowns(rows)
    assert downs["event"].to_list() == ["kvm_exit", "kvm_userspace_exit"]
    inj = kvm.injections(rows)
    assert inj["vector"].to_list() == [14, 8] and inj["inj_error_code"].to_list() == [2, 0]
    result = analyse_chains(events, cap)
    # the kvm_exit and the userspace exit 100 us later are one shutdown
    assert [i.kind for i in result.incidents] == ["triple_fault"]
    assert [e["name"] for e in result.chains[0]] == ["#PF", "#DF", "shutdown"]


# synthetic (labelled): exception exits in the formats of arch/x86/kvm/trace.h (6.x), VMX
# (EXCEPTION_NMI, intr_info 0x80000b0e = valid, error code valid, hardware exception, vector 14;
# the exit qualification info1 is the #PF address) and SVM ("PF excp": info1 = error code,
# info2 = address), then the VMX triple-fault exit
EXITS = """\
# tracer: nop
#
 qemu-system-x86-4242  [001] d..1.   200.000100: kvm_exit: vcpu 0 reason EXCEPTION_NMI rip 0x100402 info1 0x00007fffffffdff8 info2 0x0000000000000000 intr_info 0x80000b0e error_code 0x00000002
 qemu-system-x86-4242  [001] d..1.   200.000150: kvm_exit: vcpu 0 reason PF excp rip 0x100402 info1 0x0000000000000002 info2 0x00007fffffffdff8 intr_info 0x00000000 error_code 0x00000000
 qemu-system-x86-4242  [001] d..1.   200.000200: kvm_exit: vcpu 0 reason TRIPLE_FAULT rip 0x100402 info1 0x0000000000000000 info2 0x0000000000000000 intr_info 0x00000000 error_code 0x00000000
"""


def test_exception_exits_give_vector_address_and_error_code(tmp_path):
    path = tmp_path / "exits.txt"
    path.write_text(EXITS)
    cap, events = _load(path)
    exits = kvm.exception_exits(kvm.kvm_rows(events))
    assert exits["vector"].to_list() == [14, 14]
    assert exits["cr2"].to_list() == [0x7FFFFFFFDFF8, 0x7FFFFFFFDFF8]
    assert exits["exc_error_code"].to_list() == [2, 2]
    result = analyse_chains(events, cap)
    (chain,) = result.chains
    assert [e["name"] for e in chain] == ["#PF", "#PF", "shutdown"]
    assert chain[0]["cr2"] == "0x7fffffffdff8" and chain[0]["rip"] == "0x100402"
