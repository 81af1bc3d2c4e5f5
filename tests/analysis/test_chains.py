"""Fault chains on real evidence: QEMU 7.2 logs of sample_traces/qemu-tiny (the expected
values come from tiny.S: RSP 0x40001000, the push at `starve` 0x10010e writing RSP-8, the
#DF gate without IST in scenario 0 and with IST 1 in scenario 1) and public console oopses."""

from __future__ import annotations

import shutil

import polars as pl

from kmltrace import capture as capture_mod
from kmltrace.analysis.chains import analyse_chains
from kmltrace.analysis.events import merged_events
from tests.conftest import SAMPLES

TINY = SAMPLES / "qemu-tiny"
CONSOLE = SAMPLES / "console-public"


def _run(*targets, vmlinux=None):
    cap = capture_mod.load([str(t) for t in targets], vmlinux=vmlinux)
    return analyse_chains(merged_events(cap), cap)


def _kinds(result):
    return {i.kind: i for i in result.incidents}


def test_stack_starvation_reset_chain():
    result = _run(TINY / "starvation-int.log", vmlinux=str(TINY / "starvation.elf"))
    assert len(result.chains) == 1
    chain = result.chains[0]
    assert [e["name"] for e in chain] == ["#PF", "#DF", "#PF"]
    pf, df, last = chain
    assert (pf["cpl"], pf["cs"], pf["rip"], pf["rsp"], pf["cr2"], pf["error_code"]) == \
        (0, "0x8", "0x10010e", "0x40001000", "0x40000ff8", "0x2")
    assert pf["symbol"] == "starve"            # tiny.S: the label of the push
    assert pf["stack"] == "same" and df["stack"] == "same"
    assert not pf["delivered"] and not df["delivered"] and last["shutdown"]
    kinds = _kinds(result)
    assert set(kinds) == {"triple_fault", "double_fault", "stack_starvation"}
    assert all(kinds[k].severity == "critical" for k in kinds)
    starving = kinds["stack_starvation"]
    assert "8 bytes below RSP 0x40001000" in starving.summary
    assert "no IST" in starving.explanation and "Kernel Mode Linux" in starving.explanation
    assert [e["line"] for e in kinds["triple_fault"].evidence] == [477, 499, 521]


def test_df_on_ist_survives():
    result = _run(TINY / "df-ist-int.log")
    assert [[e["name"] for e in c] for c in result.chains] == [["#PF", "#DF"]]
    assert result.chains[0][1]["delivered"] is True
    kinds = _kinds(result)
    assert "triple_fault" not in kinds
    assert kinds["double_fault"].severity == "error"
    assert kinds["stack_starvation"].severity == "error"
    assert "survived" in kinds["stack_starvation"].summary


def test_idt_gates_decide_the_stack(tmp_path):
    # the gates of tiny.S scenario 1 as a snapshot would give them: #PF IST 0, #DF IST 1
    class WithIdt:
        vmlinux = None

        def __init__(self, cap):
            self.cap = cap

        def metas(self, key):
            if key == "idt":
                return [[{"vector": 14, "ist": 0, "present": True},
                         {"vector": 8, "ist": 1, "present": True}]]
            return self.cap.metas(key)
    cap = capture_mod.load([str(TINY / "df-ist-int.log")])
    result = analyse_chains(merged_events(cap), WithIdt(cap))
    assert [e["stack"] for e in result.chains[0]] == ["same", "ist1"]


def test_fault_loop_is_one_chain_no_reset():
    result = _run(TINY / "fault-loop-head.log")
    assert len(result.chains) == 1
    (pf,) = result.chains[0]
    assert pf["rip"] == "0x100111" and pf["cr2"] == "0x40000ff8"
    assert pf["repeats"] == 115          # grep -c ' v=0e' fault-loop-head.log
    kinds = _kinds(result)
    assert set(kinds) == {"stack_starvation"} and kinds["stack_starvation"].severity == "error"


def test_clean_run_and_smp_log():
    assert _run(TINY / "clean-int.log").chains == []
    smp = _run(TINY / "starvation-smp2.log")
    assert [[e["name"] for e in c] for c in smp.chains] == [["#PF", "#DF", "#PF"]]


def test_console_stack_guard_double_fault():
    result = _run(CONSOLE / "go-audit-30-stack-overflow.txt")
    assert [[e["name"] for e in c] for c in result.chains] == [["#PF", "#DF"]]
    pf, df = result.chains[0]
    assert pf["cr2"] == "0xffffc900011bbff8" and pf["stack"] == "same" and pf["inferred"]
    assert df["stack"] == "ist1" and df["symbol"] == "_raw_spin_lock_irqsave+0x9"
    assert (pf["line"], df["line"]) == (1, 2) and df["ts_ns"] == 26_859_714_000
    kinds = _kinds(result)
    df_inc = kinds["double_fault"]
    assert df_inc.severity == "error" and df_inc.pid == 459 and df_inc.comm == "go-audit"
    assert df_inc.extra["stack"] == {"type": None, "lo": "0xffffc900011bc000", "hi": "0xffffc900011bffff",
                                     "guard_hit": "0xffffc900011bbff8", "hashed": False}
    assert "_raw_spin_lock_irqsave" in df_inc.summary
    assert kinds["stack_starvation"].severity == "error"
    assert kinds["oops"].severity == "error"


def test_console_hashed_pointers_and_panic():
    cas = _kinds(_run(CONSOLE / "open-cas-997-stack-overflow.txt"))
    assert cas["double_fault"].extra["stack"]["hashed"] is True
    assert "stack_starvation" not in cas           # hashed addresses prove nothing
    pop = _run(CONSOLE / "pop-os-4029-double-fault.txt")
    kinds = _kinds(pop)
    assert kinds["oops"].severity == "critical"     # "Kernel panic - not syncing" followed
    assert "sio_ite_8872_probe" in kinds["double_fault"].summary


def test_console_reset_makes_double_fault_critical(tmp_path):
    # synthetic (labelled): a real public oops followed by a new boot banner
    text = (CONSOLE / "go-audit-30-stack-overflow.txt").read_text()
    path = tmp_path / "console.txt"
    path.write_text(text + "[    0.000000] Linux version 4.10.11-1-pagarme (gcc) #1 SMP\n")
    kinds = _kinds(_run(path))
    assert kinds["double_fault"].severity == "critical"
    assert kinds["stack_starvation"].severity == "critical"


def test_qemu_and_console_together_and_serial_removed(tmp_path):
    """Deleting the console from the inputs gives the same QEMU incidents."""
    both = _run(TINY / "starvation-int.log", CONSOLE / "go-audit-30-stack-overflow.txt")
    alone = _run(TINY / "starvation-int.log")
    qemu_kinds = sorted(i.kind for i in both.incidents if i.evidence[0]["source"].endswith(".log"))
    assert qemu_kinds == sorted(i.kind for i in alone.incidents)


def test_truncated_log_still_gives_a_chain(tmp_path):
    lines = (TINY / "starvation-int.log").read_text().splitlines(keepends=True)
    cut = tmp_path / "cut.log"
    cut.write_text("".join(lines[:505]))     # ends inside the #DF record's dump
    result = _run(cut)
    assert [[e["name"] for e in c] for c in result.chains] == [["#PF", "#DF"]]
    assert "triple_fault" not in _kinds(result)


def test_no_qemu_columns_no_chains():
    empty = pl.DataFrame({"event": ["sys_enter"], "source": ["ftrace"]}).lazy()

    class Bare:
        vmlinux = None

        def metas(self, key):
            return []
    assert analyse_chains(empty, Bare()).chains == []


def test_in_asm_block_is_kept_in_the_chain():
    result = _run(TINY / "starvation-int-inasm.log")
    pf = result.chains[0][0]
    assert "0x0010010e:  50                       pushq    %rax" in pf["in_asm"]


def test_kaslr_offset_from_the_console_applies_to_symbols(tmp_path):
    # synthetic (labelled): an old-format RIP line with its address, 0x1000 above the link
    # address of `starve` (0x10010e in starvation.elf), and the console's Kernel Offset line
    path = tmp_path / "console.txt"
    path.write_text(
        "[    1.000000] Oops: double fault: 0000 [#1] SMP\n"
        "[    1.000001] CPU: 0 PID: 7 Comm: kmlproc Not tainted 4.0.0-kml #1\n"
        "[    1.000002] RIP: 0010:[<000000000010110e>]  [<000000000010110e>] 0x10110e\n"
        "[    1.000003] RSP: 0018:0000000040001000  EFLAGS: 00010046\n"
        "[    1.000004] Kernel Offset: 0x1000 from 0xffffffff81000000\n")
    result = _run(path, vmlinux=str(TINY / "starvation.elf"))
    (df,) = result.chains[0]
    assert df["rip"] == "0x10110e" and df["symbol"] == "starve"


def test_real_panic_then_reboot_is_a_critical_oops_without_chain():
    result = _run(SAMPLES / "console-debian-6.1-panic" / "console.txt")
    assert result.chains == []
    oopses = [i for i in result.incidents if i.kind == "oops"]
    assert [(i.severity, i.evidence[0]["line"]) for i in oopses] == [("critical", 356),
                                                                      ("critical", 750)]
    assert "booted again (banner at line 394)" in oopses[0].summary
    assert oopses[0].comm == "busybox" and oopses[0].pid == 81


LINUX = SAMPLES / "linux-6.1-double-fault"


def test_real_linux_kml_style_push_qemu_and_console():
    """dfmod mode=kml on Debian 6.1: CPL 0 `push` with RSP 0x40001000 (dfmod.c)."""
    qemu = _run(LINUX / "qemu-kml.log")
    assert [[e["name"] for e in c] for c in qemu.chains] == [["#PF", "#DF"]]
    pf, df = qemu.chains[0]
    assert (pf["cpl"], pf["cs"], pf["rsp"], pf["cr2"]) == (0, "0x10", "0x40001000", "0x40000ff8")
    assert pf["rip"] == "0xffffffffc02ed07c" and pf["stack"] == "same" and df["delivered"]
    kinds = _kinds(qemu)
    assert set(kinds) == {"double_fault", "stack_starvation"}
    assert kinds["stack_starvation"].severity == "error"        # survived: #DF on IST 1

    console = _run(LINUX / "console-kml.txt")
    assert [[e["name"] for e in c] for c in console.chains] == [["#PF", "#DF"]]
    cpf, cdf = console.chains[0]
    assert cdf["symbol"] == "kml_push+0xf [dfmod]" and cdf["stack"] == "ist1"
    assert cpf["cr2"] == "0x40000ff8" and cpf["rsp"] == "0x40001000" and cpf["inferred"]
    ckinds = _kinds(console)
    assert "user-range stack at CPL 0" in ckinds["double_fault"].summary
    assert ckinds["stack_starvation"].extra["user_range_stack"] is True
    assert ckinds["oops"].severity == "critical"                 # it panicked


def test_real_linux_guard_page_overflow_6_1_forms():
    console = _run(LINUX / "console-overflow.txt")
    kinds = _kinds(console)
    assert kinds["double_fault"].extra["stack"]["type"] == "TASK"
    assert kinds["double_fault"].extra["stack"]["hashed"] is True     # (____ptrval____)
    # the oops's CR2 ffffcc64c0633ea8 is 8 bytes below RSP ffffcc64c0633eb0
    assert kinds["stack_starvation"].extra["cr2"] == "0xffffcc64c0633ea8"
    assert "recurse.isra.0+0x2c [dfmod]" in kinds["double_fault"].summary
    qemu = _run(LINUX / "qemu-overflow-tail.log")
    pf = qemu.chains[0][0]
    # QEMU's #PF: the access at RSP itself, on the guard page: RSP points into missing memory
    assert pf["cr2"] == pf["rsp"] == "0xffffcc64c0633eb0" and pf["stack"] == "same"
    assert _kinds(qemu)["stack_starvation"].severity == "error"


def test_qemu_and_console_of_one_run_are_one_episode():
    result = _run(LINUX / "qemu-kml.log", LINUX / "console-kml.txt")
    assert [[e["name"] for e in c] for c in result.chains] == [["#PF", "#DF"]]
    pf, df = result.chains[0]
    assert pf["source"] == "qemu" and pf["symbol"] == "kml_push+0xf [dfmod]"
    kinds = [i.kind for i in result.incidents]
    assert sorted(kinds) == ["double_fault", "oops", "stack_starvation"]
    starving = next(i for i in result.incidents if i.kind == "stack_starvation")
    sources = {e["source"].rsplit("/", 1)[-1] for e in starving.evidence}
    assert sources == {"qemu-kml.log", "console-kml.txt"}
    assert (starving.pid, starving.comm) == (81, "busybox")


# -- property: mutated real QEMU and console lines never make the analysis raise --------------

from hypothesis import HealthCheck, given, settings  # noqa: E402

from tests.formats.test_console import _docs as console_docs  # noqa: E402
from tests.formats.test_qemu_log import _docs as qemu_docs  # noqa: E402


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(qemu_docs, console_docs)
def test_chains_never_raise_on_mutated_evidence(tmp_path, qemu_data, console_data):
    (tmp_path / "q.log").write_bytes(qemu_data)
    (tmp_path / "c.txt").write_bytes(console_data)
    result = _run(tmp_path / "q.log", tmp_path / "c.txt")
    for chain in result.chains:
        assert all("vector" in e for e in chain)


# -- the lab's bundles (sample_traces/lab-*): expected values from the lab kernel's lab.h ------

import re  # noqa: E402

LAB_H = (SAMPLES.parent / "src" / "kmltrace" / "lab" / "kernel" / "lab.h").read_text()


def _define(name: str) -> int:
    return int(re.search(rf"#define\s+{name}\s+\(?(0x[0-9a-fA-F]+|\d+)", LAB_H).group(1), 0)


def _fresh_bundle(tmp_path, name):
    """A copy of a lab bundle without its event cache (parsed now, by this code)."""
    dest = tmp_path / name
    shutil.copytree(SAMPLES / name, dest, ignore=shutil.ignore_patterns("events.*"))
    return dest


def test_lab_starvation_tcg_chain_and_symbols(tmp_path):
    # lab.h: STARVE_RSP = USER_STACK_BOTTOM = USER_STACK_TOP - 0x1000, the frame below it unmapped
    rsp = _define("USER_STACK_TOP") - 0x1000
    result = _run(_fresh_bundle(tmp_path, "lab-starvation-tcg"))
    (chain,) = result.chains
    assert [e["name"] for e in chain] == ["#PF", "#DF", "#PF"]
    assert chain[0]["rsp"] == hex(rsp) and chain[0]["cr2"] == hex(rsp - 8)
    assert chain[0]["symbol"] == "starve_push"               # the bundle's kernel.elf
    assert [e["stack"] for e in chain[:2]] == ["same", "same"]   # the dump's IDT: IST 0
    assert {i.kind: i.severity for i in result.incidents} == {
        "triple_fault": "critical", "double_fault": "critical", "stack_starvation": "critical"}


def test_lab_starvation_kvm_reset_from_host_tracepoints(tmp_path):
    result = _run(_fresh_bundle(tmp_path, "lab-starvation-kvm"))
    (incident,) = [i for i in result.incidents if i.kind == "triple_fault"]
    assert "KVM_EXIT_SHUTDOWN" in incident.summary and "`push rax`" in incident.summary
    assert result.chains[0][-1]["symbol"] == "starve_push"


def test_lab_verdicts_do_not_need_serial_or_scenario_metadata(tmp_path):
    import json
    full = _run(_fresh_bundle(tmp_path / "a", "lab-starvation-tcg"))
    bare = _fresh_bundle(tmp_path / "b", "lab-starvation-tcg")
    for name in ("console.log", "registers.txt", "qmp-events.jsonl", "PROVENANCE.md"):
        (bare / name).unlink(missing_ok=True)
    manifest = json.loads((bare / "bundle.json").read_text())
    manifest.pop("lab", None)
    manifest["files"] = [f for f in manifest["files"] if (bare / f["path"]).exists()]
    (bare / "bundle.json").write_text(json.dumps(manifest))
    stripped = _run(bare)
    assert sorted((i.kind, i.severity) for i in stripped.incidents) == \
        sorted((i.kind, i.severity) for i in full.incidents)
    assert [[e["name"] for e in c] for c in stripped.chains] == \
        [[e["name"] for e in c] for c in full.chains]


def test_silent_reset_on_the_console(tmp_path):
    # synthetic (labelled): the first boot of the real Debian console, cut before its panic,
    # followed by the second boot's banner: the machine reset without a word
    lines = (SAMPLES / "console-debian-6.1-panic" / "console.txt").read_text().splitlines()
    path = tmp_path / "console.txt"
    path.write_text("\n".join(lines[:300] + lines[393:400]) + "\n")
    result = _run(path)
    (incident,) = [i for i in result.incidents if i.kind == "unclean_reset"]
    assert incident.severity == "critical"
    assert [e["line"] for e in incident.evidence] == [2, 301]
    # the real log, where each boot panicked before the next banner: no silent reset
    real = _run(SAMPLES / "console-debian-6.1-panic" / "console.txt")
    assert not [i for i in real.incidents if i.kind == "unclean_reset"]


def test_real_two_cpu_log_and_its_console():
    result = _run(LINUX / "qemu-kml-smp2-tail.log", LINUX / "console-kml-smp2.txt")
    assert [[e["name"] for e in c] for c in result.chains] == [["#PF", "#DF"]]
    pf, df = result.chains[0]
    assert (pf["rsp"], pf["cr2"], pf["symbol"]) == ("0x40001000", "0x40000ff8",
                                                     "kml_push+0xf [dfmod]")
    kinds = {i.kind: i for i in result.incidents}
    assert kinds["stack_starvation"].cpu == 0           # "CPU: 0 PID: 87 Comm: busybox"
    assert kinds["stack_starvation"].pid == 87


def test_timer_interrupts_between_loop_faults_do_not_break_the_loop(tmp_path):
    # synthetic (labelled) mix of real records: 40 identical #PF records of the fault-loop
    # log (22 lines each from line 475), each followed by a real timer interrupt record
    # (v=ec, 22 lines from line 3225 of the Linux log)
    pf_lines = (TINY / "fault-loop-head.log").read_text().splitlines()
    timer = (LINUX / "qemu-kml.log").read_text().splitlines()[3224:3246]
    out = pf_lines[:474]
    for k in range(40):
        out += pf_lines[474 + 22 * k:474 + 22 * (k + 1)] + timer
    path = tmp_path / "loop.log"
    path.write_text("\n".join(out) + "\n")
    result = _run(path)
    assert len(result.chains) == 1 and result.chains[0][0]["repeats"] == 40


def test_kvm_reset_dumps_give_the_triple_fault():
    """Under KVM only `-d cpu_reset` logs: the reset dump of a running CPU at CPL 0 with CR2
    8 bytes below RSP (tiny.S scenario 0) is a triple fault from stack starvation."""
    result = _run(TINY / "kvm-cpu-reset.log", vmlinux=str(TINY / "starvation.elf"))
    (chain,) = result.chains
    assert [e["name"] for e in chain] == ["#PF", "reset"]
    assert chain[1]["repeats"] == 3 and chain[1]["symbol"] == "starve"
    assert (chain[0]["rsp"], chain[0]["cr2"]) == ("0x40001000", "0x40000ff8")
    assert {i.kind: i.severity for i in result.incidents} == {
        "triple_fault": "critical", "stack_starvation": "critical"}
    # power-on resets (CR0.PE clear) and a TCG "Triple fault" followed by its reset are not
    # counted again
    assert _run(TINY / "clean-int.log").incidents == []


def test_tcg_reboot_loop_one_chain_per_triple_fault():
    result = _run(TINY / "tcg-reboot-loop.log")
    # grep -c 'Triple fault' = 3: our stack starvation, SeaBIOS's int3 through an IDT of
    # limit 0 (#GP -> #DF -> #GP), the starvation again; the resets after them add nothing
    assert [[e["name"] for e in c] for c in result.chains] == [
        ["#PF", "#DF", "#PF"], ["#GP", "#DF", "#GP"], ["#PF", "#DF", "#PF"]]
    kinds = [i.kind for i in result.incidents]
    assert kinds.count("triple_fault") == 3 and "unclean_reset" not in kinds
    # the same stack starved twice: one incident, both episodes' evidence
    (starving,) = [i for i in result.incidents if i.kind == "stack_starvation"]
    assert starving.extra["chains"] == [0, 2]


def test_lab_kvm_chain_gets_the_dump_state(tmp_path):
    """Under KVM: the host's shutdown, and the dump's CPU state (CPL 0, CR2 = RSP - 8) gives
    the starving #PF; lab.h: the stack bottom is USER_STACK_TOP - 0x1000."""
    rsp = _define("USER_STACK_TOP") - 0x1000
    result = _run(_fresh_bundle(tmp_path, "lab-starvation-kvm"))
    (chain,) = result.chains
    assert [e["name"] for e in chain] == ["#PF", "shutdown"]
    # the #PF KVM injected (kvm_inj_exception #PF (0x2)) with the dump's CPU state
    pf = chain[0]
    assert (pf["rsp"], pf["cr2"], pf["cpl"], pf["error_code"]) == (hex(rsp), hex(rsp - 8), 0,
                                                                   "0x2")
    assert pf["source"] == "kvm" and pf["state_from"] == "vmcore" and pf["stack"] == "same"
    kinds = {i.kind: i.severity for i in result.incidents}
    assert kinds == {"triple_fault": "critical", "stack_starvation": "critical"}


def test_postmortem_verb_on_a_real_mainline_double_fault():
    """The issue's check: `kmltrace postmortem` on a console log with a real mainline
    double-fault oops names the double fault, RIP's symbol and the stack that overflowed."""
    import json
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "kmltrace", "postmortem", "--json",
                          str(CONSOLE / "go-audit-30-stack-overflow.txt")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    (df,) = [i for i in report["incidents"] if i["kind"] == "double_fault"]
    assert "_raw_spin_lock_irqsave+0x9" in df["summary"]
    assert df["stack"]["lo"] == "0xffffc900011bc000" and df["stack"]["hi"] == "0xffffc900011bffff"
    assert [e["name"] for e in report["chain"]] == ["#PF", "#DF"]
