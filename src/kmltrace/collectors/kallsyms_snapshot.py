"""The part of a snapshot a kernel gives without a DWARF vmlinux: kallsyms plus hardware layouts.

drgn reads kallsyms without debug info (from memory through VMCOREINFO on Linux >= 6.0, or
``/proc/kallsyms`` when live and root).  With symbol addresses alone, what the hardware fixes
is enough for the IST checks: the IDT (``idt_table``, 256 gates of 16 bytes), each CPU's TSS
(``cpu_tss_rw`` + ``__per_cpu_offset[cpu]``: the hardware TSS is the first member of
``struct tss_struct``), and the per-CPU GS base.  Tasks need the kernel's struct layouts:
those come from DWARF or the kernel's own BTF (in memory between ``__start_BTF`` and
``__stop_BTF``: :func:`for_each_task_btf`, thread-group leaders only, no exe or stack VMA).
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


# -- tasks from the kernel's BTF ---------------------------------------------------------------

PF_KTHREAD = 0x00200000
PAGE = 4096
_PRESENT, _LARGE = 1, 1 << 7
_ADDRESS_MASK = 0x000F_FFFF_FFFF_F000


def load_btf(prog):
    """The kernel's own BTF, read from memory between ``__start_BTF`` and ``__stop_BTF``."""
    from kmltrace.collectors.btf import Btf

    start = symbol_address(prog, "__start_BTF")
    return Btf(prog.read(start, symbol_address(prog, "__stop_BTF") - start))


class TaskLayout:
    """Offsets of what a snapshot reads from ``struct task_struct``, ``mm_struct`` and
    ``pt_regs``, from BTF."""

    def __init__(self, btf):
        task = lambda path: btf.offsetof("task_struct", path)  # noqa: E731
        self.tasks, self.pid, self.tgid = task("tasks"), task("pid"), task("tgid")
        self.comm, self.mm, self.stack, self.flags = task("comm"), task("mm"), task("stack"), \
            task("flags")
        # thread_info inside task_struct since v4.9 (CONFIG_THREAD_INFO_IN_TASK on x86)
        self.ti_flags = task("thread_info") + btf.offsetof("thread_info", "flags")
        self.fsbase, self.gsbase = task("thread.fsbase"), task("thread.gsbase")
        self.pgd = btf.offsetof("mm_struct", "pgd")
        self.regs_size = btf.sizeof("pt_regs")
        self.regs = {r: btf.offsetof("pt_regs", r) for r in ("ip", "cs", "flags", "sp", "ss")}


def _u64(prog, address: int) -> int:
    return struct.unpack("<Q", prog.read(address, 8))[0]


def page_present(prog, pgd: int, address: int, levels: int, direct_map: int) -> bool:
    """Whether `address` is backed by a present page in the page tables at `pgd` (virtual),
    4- or 5-level, 1 GiB and 2 MiB pages included."""
    table = pgd
    for level in range(levels, 0, -1):
        entry = _u64(prog, table + 8 * ((address >> (12 + 9 * (level - 1))) & 511))
        if not entry & _PRESENT:
            return False
        if level in (2, 3) and entry & _LARGE:
            return True
        table = direct_map + (entry & _ADDRESS_MASK)
    return True


def mapped_bytes_below(prog, pgd: int, sp: int, levels: int, direct_map: int,
                       limit: int) -> int:
    page = sp & ~(PAGE - 1)
    while sp - page < limit:
        if not page_present(prog, pgd, page, levels, direct_map):
            return max(sp - (page + PAGE), 0)
        page -= PAGE
    return limit


def for_each_task_btf(prog, btf, kml: bool, errors: list, limit: int) -> list[dict]:
    """Thread-group leaders (``init_task.tasks``) with the fields of the DWARF snapshot that
    need no helper beyond offsets: pid, tgid, comm, mode, saved registers, segment bases,
    mapped bytes below sp.  (No exe, state, stack VMA.)"""
    from kmltrace.analysis.snapshot_checks import task_mode

    drgn_fault = _fault_error()
    layout = TaskLayout(btf)
    thread_size = prog["THREAD_SIZE"].value_()
    direct_map = _u64(prog, symbol_address(prog, "page_offset_base"))
    levels = 5 if _l5(prog) else 4
    head = symbol_address(prog, "init_task") + layout.tasks
    out, node = [], _u64(prog, head)
    while node != head and len(out) < 1 << 20:
        task = node - layout.tasks
        try:
            out.append(_task(prog, task, layout, kml, thread_size, direct_map, levels, limit,
                             task_mode))
        except drgn_fault as e:
            errors.append(f"task at {task:#x}: cannot read {e}")
        node = _u64(prog, node)
    return out


def _task(prog, task, layout, kml, thread_size, direct_map, levels, limit, task_mode) -> dict:
    u32 = lambda at: struct.unpack("<I", prog.read(at, 4))[0]  # noqa: E731
    comm = prog.read(task + layout.comm, 16).split(b"\0", 1)[0]
    out = {"pid": u32(task + layout.pid), "tgid": u32(task + layout.tgid),
           "comm": comm.decode(errors="backslashreplace")}
    mm = _u64(prog, task + layout.mm)
    flags = _u64(prog, task + layout.ti_flags)
    out["thread_flags"] = hexstr(flags)
    kthread = not mm or bool(u32(task + layout.flags) & PF_KTHREAD)
    cs = None
    if not kthread:
        regs = _u64(prog, task + layout.stack) + thread_size - layout.regs_size
        values = {r: _u64(prog, regs + off) for r, off in layout.regs.items()}
        cs = values["cs"] & 0xFFFFFFFF   # KML's marker fits; FRED's bits above stay out
        out.update(cs=hexstr(cs), ss=hexstr(values["ss"]), ip=hexstr(values["ip"]),
                   sp=hexstr(values["sp"]), rflags=hexstr(values["flags"]),
                   fs_base=hexstr(_u64(prog, task + layout.fsbase)),
                   gs_base=hexstr(_u64(prog, task + layout.gsbase)))
        out["sp_mapped_below"] = mapped_bytes_below(prog, _u64(prog, mm + layout.pgd),
                                                    values["sp"], levels, direct_map, limit)
    out["mode"], out["evidence"] = task_mode(cs, flags, kthread, kml)
    return out


def _l5(prog) -> bool:
    try:
        from drgn.helpers.linux.boot import pgtable_l5_enabled
        return bool(pgtable_l5_enabled(prog))
    except Exception:  # no VMCOREINFO number: 4-level, what every x86-64 kernel boots by default
        return False


def _fault_error():
    import drgn
    return drgn.FaultError
