"""dump-guest-memory ELF cores of real lab runs (sample_traces/lab-*-tcg): IDT, TSS, paging.

Expected values come from the lab kernel's source: lab.h (through kmltrace.lab.scenarios) and
the labels of kernel.S (symbols of the kernel.elf saved in each bundle).
"""

import struct

import pytest
import zstandard

from kmltrace.errors import InputError
from kmltrace.formats import guest_memory
from kmltrace.formats.sniff import parse_file
from kmltrace.lab import scenarios
from tests.conftest import SAMPLES

C = scenarios.constants()


def bundle(name):
    return SAMPLES / f"lab-{name}-tcg"


def symbols(name):
    return scenarios.elf_symbols(bundle(name) / "kernel.elf")


def test_sniff_compressed_and_plain_core_but_not_the_kernel_elf(tmp_path):
    core = bundle("starvation") / "vmcore.elf.zst"
    assert guest_memory.sniff(core.read_bytes()[:65536])
    plain = zstandard.ZstdDecompressor().stream_reader(open(core, "rb")).read()
    assert guest_memory.sniff(plain[:65536])
    assert not guest_memory.sniff((bundle("starvation") / "kernel.elf").read_bytes()[:65536])
    assert not guest_memory.sniff(guest_memory.ZSTD_MAGIC + b"garbage" * 10)


@pytest.mark.parametrize("name", sorted(scenarios.SCENARIOS))
def test_idt_gates_are_those_the_scenario_installs(name):
    parsed = parse_file(bundle(name) / "vmcore.elf.zst")
    assert parsed.format == "vmcore" and parsed.errors == []
    idt = {g["vector"]: g for g in parsed.meta["idt"]}
    assert len(idt) == 256
    for vector, ist in scenarios.get(name).gates.items():
        assert idt[vector]["ist"] == ist and idt[vector]["present"]
        assert idt[vector]["selector"] == hex(C["KERNEL_CS"])
    tss = parsed.meta["tss"][0]
    assert int(tss["ist"][C["IST_INDEX"] - 1], 16) == symbols(name)["ist_stack_top"]
    assert int(tss["sp0"], 16) == symbols(name)["kernel_stack_top"]
    assert parsed.meta["snapshot"]["idt"] == parsed.meta["idt"]


def test_starvation_cpu_state_is_the_moment_of_the_triple_fault():
    state = parse_file(bundle("starvation") / "vmcore.elf.zst").meta["cpu_state"][0]
    assert int(state["rip"], 16) == symbols("starvation")["starve_push"]
    assert int(state["rsp"], 16) == C["STARVE_RSP"]
    assert int(state["cr2"], 16) == C["STARVE_CR2"]
    assert state["cpl"] == 0 and int(state["idt_base"], 16) == symbols("starvation")["idt"]


def test_page_walk_follows_the_kernels_tables():
    core = bundle("starvation") / "vmcore.elf.zst"
    memory = guest_memory.GuestMemory(core)
    cr3 = symbols("starvation")["pml4"]
    assert memory.translate(C["USER_STACK_BOTTOM"] + 0x10, cr3) == \
        symbols("starvation")["user_stack"] + 0x10
    assert memory.translate(C["GUARD_PAGE"], cr3) is None          # never mapped
    assert memory.translate(0x123456, cr3) == 0x123456              # 2 MiB identity pages
    # pf-ist's handler mapped the guard page onto spare_page before returning
    grown = guest_memory.GuestMemory(bundle("pf-ist") / "vmcore.elf.zst")
    assert grown.translate(C["GUARD_PAGE"] + 8, symbols("pf-ist")["pml4"]) == \
        symbols("pf-ist")["spare_page"] + 8


def _plain_core(name):
    with open(bundle(name) / "vmcore.elf.zst", "rb") as f:
        return zstandard.ZstdDecompressor().stream_reader(f).read()


def test_truncated_core_is_one_error_with_an_offset(tmp_path):
    cut = tmp_path / "vmcore.elf"
    cut.write_bytes(_plain_core("starvation")[:100_000])
    parsed = parse_file(cut)
    assert parsed.format == "vmcore" and len(parsed.errors) == 1
    error = parsed.errors[0]
    assert isinstance(error, InputError) and error.offset is not None
    assert "truncated" in error.message


def test_without_qemu_notes_the_registers_beside_locate_the_idt(tmp_path):
    data = bytearray(_plain_core("redzone-ist"))
    phoff, = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    for i in range(phnum):   # turn the notes segment into PT_NULL: no QEMU CPU state left
        if struct.unpack_from("<I", data, phoff + i * phentsize)[0] == guest_memory.PT_NOTE:
            struct.pack_into("<I", data, phoff + i * phentsize, 0)
    core = tmp_path / "vmcore.elf"
    core.write_bytes(bytes(data))
    assert parse_file(core).errors[0].message.startswith("no CPU state")
    (tmp_path / "registers.txt").write_bytes((bundle("redzone-ist") / "registers.txt").read_bytes())
    parsed = parse_file(core)
    assert parsed.errors == []
    assert parsed.meta["cpu_state"][0]["source"] == "registers.txt"
    idt = {g["vector"]: g["ist"] for g in parsed.meta["idt"]}
    assert idt[C["TIMER_VECTOR"]] == C["IST_INDEX"]
