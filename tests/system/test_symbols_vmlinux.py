"""The symbol service on a real randomised kernel: Debian's cloud kernel (DWARF vmlinux from
its -dbg package) booted under QEMU TCG and dumped (tests/system/build_debian_guest.py, cached).

Expected names come from elsewhere than our code: the KASLR offset from the dump's own
VMCOREINFO note (``KERNELOFFSET=``), the IDT handlers' names from the kernel source
(arch/x86/kernel/idt.c, as in test_snapshot.py), and every address's symbol from drgn reading
the same dump and vmlinux.
"""

from __future__ import annotations

import re
import sys

import pytest

from kmltrace.formats import parse_path
from kmltrace.symbols import Symbolizer
from kmltrace.symbols.service import load_table
from tests.conftest import require_binary, require_qemu
from tests.system import build_debian_guest as fixture

pytestmark = pytest.mark.system

SOURCE_NAMES = {14: "asm_exc_page_fault", 8: "asm_exc_double_fault", 2: "asm_exc_nmi",
                1: "asm_exc_debug", 0xEC: "asm_sysvec_apic_timer_interrupt"}


@pytest.fixture(scope="module")
def guest():
    require_qemu()
    for tool in ("apt-get", "apt-cache", "dpkg-deb", "gcc", "objcopy", "busybox"):
        require_binary(tool)
    built = fixture.build(log=lambda m: print(m, file=sys.stderr))
    fixture.ensure_vmcore(built)
    return built


def kernel_offset(vmcore) -> int:
    with open(vmcore, "rb") as f:
        m = re.search(rb"KERNELOFFSET=([0-9a-f]+)", f.read(1 << 20))   # the notes come first
    assert m, "no VMCOREINFO KERNELOFFSET in the dump"
    return int(m.group(1), 16)


def test_randomised_kernel_addresses_match_drgn_and_the_source(guest):
    import drgn
    slide = kernel_offset(guest.vmcore)
    assert slide != 0                                   # KASLR really moved this boot
    dump = parse_path(guest.vmcore)
    sym = Symbolizer(kernel=load_table(guest.vmlinux), kernel_slide=slide)
    for vector, name in SOURCE_NAMES.items():
        handler = int(dump.meta["idt"][vector]["handler"], 16)
        assert sym.kernel_symbol(handler).startswith(f"{name}+0x0/"), vector
    prog = drgn.Program()
    prog.set_core_dump(str(guest.vmcore))
    prog.load_debug_info([str(guest.vmlinux)])
    addrs = [int(g["handler"], 16) for g in dump.meta["idt"] if g["present"]]
    addrs += [int(c["rip"], 16) for c in dump.meta["cpu_state"]]
    checked = 0
    for addr in addrs:
        try:
            theirs = prog.symbol(addr)
        except LookupError:
            continue
        ours = sym.kernel_symbol(addr)
        assert ours == f"{theirs.name}+{addr - theirs.address:#x}/{theirs.size:#x}", hex(addr)
        checked += 1
    assert checked >= 200


def test_cached_vmlinux_table_and_console_style_offset(guest):
    first = load_table(guest.vmlinux)
    assert len(first) > 50_000 and first.meta["build_id"]
    again = load_table(guest.vmlinux)
    assert again.to_frame().equals(first.to_frame())
    # the console prints the same value as "Kernel Offset: 0x..."; for_capture takes it
    class Console:
        vmlinux, processes, bundles, inputs = str(guest.vmlinux), [], [], []

        def metas(self, key):
            return [kernel_offset(guest.vmcore)] if key == "kaslr_offset" else []
    sym = Symbolizer.for_capture(Console())
    assert sym.kernel_slide == kernel_offset(guest.vmcore)
