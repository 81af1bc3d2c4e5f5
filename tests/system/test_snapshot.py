"""``kmltrace snapshot`` on a real kernel: Debian's current cloud kernel booted under QEMU TCG.

The guest (tests/system/build_debian_guest.py, cached) runs ``snapwork``, which recurses
DEPTH frames of FRAME bytes and sleeps, printing its pid and the address of its deepest
frame.  The expected values come from the kernel source and from that workload:

- mainline's IDT (arch/x86/kernel/idt.c ``def_idts``, arch/x86/include/asm/page_64_types.h
  IST_INDEX_*; a gate's IST field is the index + 1): #DF IST 1, NMI IST 2, #DB IST 3,
  #MC IST 4 (Debian's cloud kernel has no CONFIG_X86_MCE: vector 18 keeps its early handler),
  #VC IST 5 (CONFIG_AMD_MEM_ENCRYPT), #PF and the timer IST 0;
- ``cpu_init_exception_handling`` sets TSS ist[IST_INDEX_x] to the top of that CPU's
  ``cea_exception_stacks`` x_stack;
- the IDT and TSS are also decoded without drgn, from IDTR and TR in QEMU's notes of the same
  dump (formats/guest_memory.py), and CPUs idle in the kernel have their per-CPU base in GS.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from kmltrace.formats import parse_path
from tests.conftest import require_binary, require_qemu
from tests.system import build_debian_guest as fixture

pytestmark = pytest.mark.system

MAINLINE_IST = {8: ("asm_exc_double_fault", 1), 2: ("asm_exc_nmi", 2), 1: ("asm_exc_debug", 3),
                18: ("asm_exc_machine_check", 4), 29: ("asm_exc_vmm_communication", 5),
                14: ("asm_exc_page_fault", 0), 0xEC: ("asm_sysvec_apic_timer_interrupt", 0)}
#: tss.ist[i] is the top of this cea_exception_stacks member (IST_INDEX_DF..IST_INDEX_VC)
IST_STACKS = ["DF", "NMI", "DB", "MCE", "VC"]


def kmltrace(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "kmltrace", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def guest():
    require_qemu()
    for tool in ("apt-get", "apt-cache", "dpkg-deb", "gcc", "objcopy", "busybox"):
        require_binary(tool)
    built = fixture.build(log=lambda m: print(m, file=sys.stderr))
    with fixture.running(built) as vm:
        # this run's own dump, in the guest's temporary directory: dump and live guest are
        # one boot, and test runs side by side on one machine do not share a dump
        dump = vm.dump(vm.workdir / "vmcore.elf")
        yield Session(dump, vm.console, built.vmlinux, built.release), vm


@dataclass
class Session:
    """The guest files one test run uses."""

    vmcore: Path
    vmcore_console: Path
    vmlinux: Path
    release: str


@pytest.fixture(scope="module")
def snap_file(guest, tmp_path_factory):
    built, _ = guest
    out = tmp_path_factory.mktemp("snapshot") / "snap.json"
    result = kmltrace("snapshot", "--vmcore", built.vmcore, "--vmlinux", built.vmlinux, "-o", out)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def snap(snap_file):
    parsed = parse_path(snap_file)
    assert parsed.format == "snapshot" and parsed.errors == []
    return parsed.meta["snapshot"]


@pytest.fixture(scope="module")
def dumped(guest):
    """The same dump decoded without drgn (IDTR, TR and GS from QEMU's notes)."""
    built, _ = guest
    parsed = parse_path(built.vmcore)
    assert parsed.format == "vmcore" and parsed.errors == []
    return parsed.meta


@pytest.fixture(scope="module")
def workload(guest):
    built, _ = guest
    m = fixture.READY.search(built.vmcore_console.read_bytes())
    assert m, "snapwork's line is missing from the console of the dumped boot"
    return {"pid": int(m.group(1)), "deep": int(m.group(2), 16), "top": int(m.group(3), 16)}


def by_pid(snap) -> dict[int, dict]:
    return {t["pid"]: t for t in snap["tasks"]}


def h(value) -> int:
    return int(value, 16)


# -- kernel and IDT ----------------------------------------------------------------------------

def test_kernel(snap, guest):
    built, _ = guest
    assert snap["kernel"]["release"] == built.release
    assert snap["kernel"]["kml"] is False and snap["kernel"]["kml_evidence"] == []
    assert snap["kernel"]["cpus"] == fixture.GUEST_CPUS == len(snap["cpus"])
    assert "errors" not in snap


def test_idt_has_mainline_ist_layout(snap):
    gates = snap["idt"]
    assert [g["vector"] for g in gates] == list(range(256))
    for vector, (symbol, ist) in MAINLINE_IST.items():
        gate = gates[vector]
        if vector == 18 and gate["symbol"] != symbol:
            # no CONFIG_X86_MCE in this kernel: the early IDT handler stayed
            assert gate["symbol"].startswith("early_idt_handler_array+")
            continue
        assert (gate["symbol"], gate["ist"], gate["present"]) == (symbol, ist, True), vector
    assert all(g["selector"] == "0x10" for g in gates if g["present"])   # __KERNEL_CS
    assert gates[3]["dpl"] == 3 and gates[14]["dpl"] == 0                # int3 from user space
    # only those five vectors have an IST
    assert {g["vector"] for g in gates if g["ist"]} <= {8, 2, 1, 18, 29}


def test_idt_equals_the_gates_read_through_idtr(snap, dumped):
    keys = ("vector", "handler", "selector", "type", "dpl", "present", "ist")
    assert [{k: g[k] for k in keys} for g in snap["idt"]] == \
        [{k: g[k] for k in keys} for g in dumped["idt"]]


# -- per CPU -----------------------------------------------------------------------------------

def test_tss_ist_pointers_are_the_tops_of_the_cpus_exception_stacks(snap):
    seen = set()
    for cpu in snap["cpus"]:
        ist = cpu["tss"]["ist"]
        stacks = cpu["exception_stacks"]
        for index, name in enumerate(IST_STACKS):
            lo, hi = map(h, stacks[name])
            assert h(ist[index]) == hi and hi - lo == 8192, (cpu["cpu"], name)
            seen.add(h(ist[index]))
        assert ist[5:] == ["0x0", "0x0"]
        # DF, NMI, DB and MCE stacks are mapped; #VC's only under SEV-ES
        assert cpu["ist_mapped"][:4] == [True] * 4
    assert len(seen) == len(IST_STACKS) * len(snap["cpus"])   # nothing shared between CPUs


def test_tss_equals_the_one_read_through_tr(snap, dumped):
    for cpu, tss in zip(snap["cpus"], dumped["tss"]):
        assert cpu["tss"] == {k: tss[k] for k in ("sp0", "sp1", "sp2", "ist")}


def test_per_cpu_base_is_what_idle_cpus_have_in_gs(snap, dumped):
    in_kernel = [s for s in dumped["cpu_state"] if s["cpl"] == 0]
    assert in_kernel, "no CPU was in the kernel when the dump was taken"
    for state in in_kernel:
        assert snap["cpus"][state["cpu"]]["gs_base"] == state["gs_base"]


# -- tasks -------------------------------------------------------------------------------------

def test_workload_task(snap, workload):
    task = by_pid(snap)[workload["pid"]]
    assert (task["comm"], task["exe"], task["mode"]) == ("snapwork", "/snapwork", "user")
    assert task["state"] == "S"   # asleep in pause()
    assert (task["cs"], task["ss"]) == ("0x33", "0x2b")
    sp, (lo, hi) = h(task["sp"]), map(h, task["stack_vma"])
    assert task["sp_in_stack_vma"] and lo <= sp < hi
    # the saved sp sits just below snapwork's deepest frame (pause() and libc's frames)
    assert 0 < workload["deep"] - sp < 256
    assert lo <= workload["top"] < hi
    assert workload["top"] - sp >= fixture.DEPTH * fixture.FRAME
    assert 0 <= task["sp_mapped_below"] < 64 * 1024


def test_kernel_threads(snap):
    tasks = by_pid(snap)
    assert (tasks[2]["comm"], tasks[2]["mode"]) == ("kthreadd", "kthread")
    named = [t for t in snap["tasks"] if t["comm"].startswith(("kworker/", "ksoftirqd/"))]
    assert len(named) >= fixture.GUEST_CPUS
    assert {t["mode"] for t in named} == {"kthread"}
    assert all("cs" not in t for t in named)
    # pid 1 is the initramfs's init, exec'd into busybox sleep
    assert (tasks[1]["mode"], tasks[1]["exe"]) == ("user", "/bin/busybox")


def test_no_incidents_on_a_mainline_kernel(snap):
    assert snap["incidents"] == []


def test_report_reads_the_snapshot(snap_file, workload):
    result = kmltrace("report", snap_file, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [i["kind"] for i in report["incidents"] if i["kind"] == "ist_missing"] == []
    modes = {p["pid"]: p["mode"] for p in report["processes"]}
    assert modes[workload["pid"]] == "user" and modes[2] == "kthread"


# -- the running guest over QMP ----------------------------------------------------------------

def test_qemu_qmp_gives_the_same_gates_and_tasks(guest, snap):
    built, vm = guest
    result = kmltrace("snapshot", "--qemu", vm.qmp_path, "--vmlinux", built.vmlinux, "--json")
    assert result.returncode == 0, result.stderr
    live = json.loads(result.stdout)
    assert live["source"] == f"qmp:{vm.qmp_path}"
    assert live["idt"] == snap["idt"]
    assert [c["tss"] for c in live["cpus"]] == [c["tss"] for c in snap["cpus"]]
    pid = vm.ready["pid"]
    keep = ("comm", "exe", "mode", "cs", "ss", "ip", "sp", "stack_vma")
    assert {k: by_pid(live)[pid].get(k) for k in keep} == {k: by_pid(snap)[pid].get(k) for k in keep}
    # tasks older than the workload were there at both moments
    older = lambda s: {(t["pid"], t["comm"], t["mode"]) for t in s["tasks"] if t["pid"] <= pid}  # noqa: E731
    assert older(live) == older(snap)


# -- bad inputs made from the real dump --------------------------------------------------------

def _note_offset(path) -> tuple[int, int]:
    with open(path, "rb") as f:
        header = f.read(64)
        phoff, = struct.unpack_from("<Q", header, 32)
        phentsize, phnum = struct.unpack_from("<HH", header, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    for i in range(phnum):
        kind, _, offset, _, _, size = struct.unpack_from("<IIQQQQ", table, i * phentsize)
        if kind == 4:   # PT_NOTE
            return offset, size
    raise AssertionError("no PT_NOTE")


def one_line_error(*args) -> str:
    result = kmltrace("snapshot", *args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    return lines[0]


def test_dump_without_vmcoreinfo(guest, tmp_path):
    built, _ = guest
    copy = tmp_path / "no-vmcoreinfo.elf"
    shutil.copyfile(built.vmcore, copy)
    offset, size = _note_offset(copy)
    with open(copy, "r+b") as f:
        f.seek(offset)
        notes = f.read(size)
        f.seek(offset + notes.index(b"VMCOREINFO"))
        f.write(b"XMCOREINFO")
    assert "QEMU memory dump without VMCOREINFO" in one_line_error(
        "--vmcore", copy, "--vmlinux", built.vmlinux)


def test_truncated_dump(guest, tmp_path):
    built, _ = guest
    cut = tmp_path / "cut.elf"
    with open(built.vmcore, "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(32 << 20))
    line = one_line_error("--vmcore", cut, "--vmlinux", built.vmlinux)
    assert "truncated dump: its ELF headers describe" in line
    assert line.endswith(f"the file has {32 << 20}")


def test_vmlinux_of_another_build(guest, tmp_path):
    built, _ = guest
    other = tmp_path / "vmlinux"
    shutil.copyfile(built.vmlinux, other)
    from elftools.elf.elffile import ELFFile
    with open(other, "r+b") as f:
        notes = ELFFile(f).get_section_by_name(".notes")
        base = notes["sh_offset"]
        f.seek(base)
        data = f.read(notes["sh_size"])
        at = 0
        while at < len(data):   # the GNU build-id note: another build of the same release
            namesz, descsz, kind = struct.unpack_from("<III", data, at)
            desc = at + 12 + (namesz + 3 & ~3)
            if kind == 3 and data[at + 12:at + 15] == b"GNU":
                f.seek(base + desc)
                f.write(bytes(b ^ 0xFF for b in data[desc:desc + descsz]))
                break
            at = desc + (descsz + 3 & ~3)
        else:
            raise AssertionError("no build-id note")
    line = one_line_error("--vmcore", built.vmcore, "--vmlinux", other)
    assert "is not the vmlinux of this kernel" in line


def test_without_dwarf_kallsyms_and_btf_give_the_same_snapshot(guest, snap, tmp_path):
    built, _ = guest
    out = tmp_path / "nodwarf.json"
    result = kmltrace("snapshot", "--vmcore", built.vmcore, "-o", out)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 0 and len(lines) == 1, result.stderr
    assert f"warning: no debug info for kernel {built.release}" in lines[0]
    assert f"linux-image-{built.release}-dbg" in lines[0]
    assert "tasks from the kernel's BTF" in lines[0]
    partial = parse_path(out).meta["snapshot"]
    assert partial["limits"] and partial["incidents"] == []
    # every task (all are thread-group leaders in this guest) with the same values as DWARF's,
    # sp_mapped_below included (our page walk vs drgn's follow_phys)
    full = by_pid(snap)
    assert sorted(t["pid"] for t in partial["tasks"]) == sorted(full)
    for task in partial["tasks"]:
        assert task == {k: full[task["pid"]].get(k) for k in task}
    keys = ("vector", "handler", "selector", "type", "dpl", "present", "ist")
    assert [{k: g[k] for k in keys} for g in partial["idt"]] == \
        [{k: g[k] for k in keys} for g in snap["idt"]]
    for vector in (1, 2, 8, 14, 29):   # aliases aside, the handlers' names agree
        assert partial["idt"][vector]["symbol"] == snap["idt"][vector]["symbol"]
    for cpu, full in zip(partial["cpus"], snap["cpus"], strict=True):
        assert {k: cpu[k] for k in ("cpu", "tss", "ist_mapped", "gs_base")} == \
            {k: full[k] for k in ("cpu", "tss", "ist_mapped", "gs_base")}


def test_zstd_dump_as_collect_vm_keeps_it(guest, snap, tmp_path):
    import zstandard

    built, _ = guest
    packed = tmp_path / "vmcore.elf.zst"
    with open(built.vmcore, "rb") as src, open(packed, "wb") as dst:
        zstandard.ZstdCompressor(level=1).copy_stream(src, dst)
    result = kmltrace("snapshot", "--vmcore", packed, "--vmlinux", built.vmlinux, "--json")
    assert result.returncode == 0, result.stderr
    unpacked = json.loads(result.stdout)
    assert unpacked["idt"] == snap["idt"] and unpacked["tasks"] == snap["tasks"]
    assert unpacked["source"] == str(packed)


def test_qemu_qmp_on_a_paused_guest(guest, snap):
    # what `kmltrace collect --vm` leaves behind: a guest stopped, not reset
    built, vm = guest
    vm.qmp("stop")
    try:
        assert vm.qmp("query-status")["status"] == "paused"
        result = kmltrace("snapshot", "--qemu", vm.qmp_path, "--vmlinux", built.vmlinux,
                          "--json")
    finally:
        vm.qmp("cont")
    assert result.returncode == 0, result.stderr
    paused = json.loads(result.stdout)
    assert paused["idt"] == snap["idt"]
    assert by_pid(paused)[vm.ready["pid"]]["sp"] == by_pid(snap)[vm.ready["pid"]]["sp"]


def test_the_mainline_layout_judged_as_if_kml(snap):
    """The real Debian snapshot with only kernel.kml flipped (derived, labelled): a KML kernel
    with this IDT would take #PF and the timer on the process's own stack, and its IST5
    (#VC's) is unmapped, since mainline maps the #VC stacks only under SEV-ES
    (arch/x86/mm/cpu_entry_area.c, percpu_setup_exception_stacks)."""
    import copy

    from kmltrace.analysis.snapshot_checks import check_snapshot

    as_kml = copy.deepcopy(snap)
    as_kml["kernel"]["kml"] = True
    incidents = check_snapshot(as_kml)
    assert {i.kind for i in incidents} == {"ist_missing"}
    gates = [i for i in incidents if "vectors" in i.extra]
    assert len(gates) == 1 and {14, 0xEC} <= set(gates[0].extra["vectors"])
    unmapped = sorted(i.cpu for i in incidents if "IST5 points to unmapped memory" in i.summary)
    assert unmapped == list(range(fixture.GUEST_CPUS))


@pytest.mark.parametrize("with_vmlinux", [True, False])
def test_report_on_the_dump_itself_reads_the_tasks(guest, workload, with_vmlinux):
    built, _ = guest
    args = ["--vmlinux", built.vmlinux] if with_vmlinux else []
    result = kmltrace("report", built.vmcore, *args, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["incidents"] == []
    process = {p["pid"]: p for p in report["processes"]}[workload["pid"]]
    assert (process["comm"], process["mode"]) == ("snapwork", "user")
    assert "snapshot: saved CS 0x33 (user mode)" in process["evidence"]
