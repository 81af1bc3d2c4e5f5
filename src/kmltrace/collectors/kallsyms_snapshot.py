"""The part of a snapshot a kernel gives without a DWARF vmlinux: kallsyms plus hardware layouts.

drgn reads kallsyms without debug info (from memory through VMCOREINFO on Linux >= 6.0, or
``/proc/kallsyms`` when live and root).  With symbol addresses alone, what the hardware fixes
is enough for the IST checks: the IDT (``idt_table``, 256 gates of 16 bytes), each CPU's TSS
(``cpu_tss_rw`` + ``__per_cpu_offset[cpu]``: the hardware TSS is the first member of
``struct tss_struct``), and the per-CPU GS base.  Tasks need the kernel's struct layouts:
those come from DWARF (or, not done yet, the kernel's own BTF between ``__start_BTF`` and
``__stop_BTF``).
"""

from __future__ import annotations

import struct

from kmltrace.output import hexstr

#: struct x86_hw_tss (packed): reserved1, sp0, sp1, sp2, reserved2, ist[7]
HW_TSS = struct.Struct("<IQQQQ7Q")
IDT_BYTES = 256 * 16


def use_kallsyms(prog) -> bool:
    """Make `prog` resolve symbols from the kernel's kallsyms; False when it has none."""
    try:
        from drgn.helpers.linux.kallsyms import load_vmlinux_kallsyms

        prog.register_symbol_finder("kmltrace_kallsyms", load_vmlinux_kallsyms(prog),
                                    enable_index=0)
        prog.symbol("idt_table")
        return True
    except (ImportError, LookupError, ValueError, OSError, AttributeError):
        return False
    except Exception as e:  # drgn.FaultError: the kallsyms tables are not in the dump
        if type(e).__name__ == "FaultError":
            return False
        raise


def symbol_address(prog, *names: str) -> int:
    """The address of the first of `names` the kernel has (renamed symbols: newest first)."""
    for name in names:
        try:
            return prog.symbol(name).address
        except LookupError:
            continue
    raise LookupError(f"none of the symbols {', '.join(names)} in kallsyms")


def nr_cpu_ids(prog) -> int:
    return struct.unpack("<I", prog.read(symbol_address(prog, "nr_cpu_ids"), 4))[0]


def per_cpu_offsets(prog, cpus: int) -> list[int]:
    """``__per_cpu_offset[0..cpus)``: each CPU's per-CPU base (its kernel GS base)."""
    data = prog.read(symbol_address(prog, "__per_cpu_offset"), 8 * cpus)
    return list(struct.unpack(f"<{cpus}Q", data))


def tss_of_cpu(prog, offset: int) -> tuple[int, dict]:
    """(address, stack pointers) of the TSS of the CPU whose per-CPU base is `offset`
    (``cpu_tss_rw``; ``cpu_tss`` before v4.15)."""
    address = symbol_address(prog, "cpu_tss_rw", "cpu_tss") + offset
    fields = HW_TSS.unpack(prog.read(address, HW_TSS.size))
    return address, {"sp0": hexstr(fields[1]), "sp1": hexstr(fields[2]), "sp2": hexstr(fields[3]),
                     "ist": [hexstr(v) for v in fields[5:12]]}


def idt_bytes(prog) -> bytes:
    return prog.read(symbol_address(prog, "idt_table"), IDT_BYTES)
