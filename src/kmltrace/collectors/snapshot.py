"""drgn snapshot of a kernel: IDT gates, per-CPU TSS and exception stacks, tasks' saved registers.

Three sources: the running kernel (``/proc/kcore``, root), a vmcore (ELF or kdump; QEMU's
``dump-guest-memory`` ELF when the guest had ``-device vmcoreinfo`` and ``qemu_fw_cfg``), and a
running or paused QEMU guest over QMP (drgn's ``Program.set_qemu_qmp``).  The result is the
snapshot object of CONTRACT.md (every field in docs/snapshot.md); the checks that turn it into
incidents live in :mod:`kmltrace.analysis.snapshot_checks` and work on that object alone.

Helpers are named after the kernel objects they read, in the style of drgn's own
``helpers/linux/stack.py`` (``_x86_64_exception_stacks``) and ``irq.py`` (``gate_desc_func``).
Kernel-version differences are handled by trying the newer name and falling back on
``LookupError``/``AttributeError``, with the kernel change named in a comment.
"""

from __future__ import annotations

import logging
import os
import struct
import tempfile
from pathlib import Path

from kmltrace.analysis.idt import decode_gates
from kmltrace.analysis.snapshot_checks import (KML_SYMBOLS, TIF_KU, check_snapshot, kml_evidence,
                                               task_mode)
from kmltrace.collectors import kallsyms_snapshot
from kmltrace.collectors.kallsyms_snapshot import use_kallsyms
from kmltrace.errors import InputError, KmltraceError, RefusedError
from kmltrace.output import hexstr

KCORE = Path("/proc/kcore")
#: how far below a saved sp we walk the page tables looking for the first unmapped page
MAPPED_BELOW_LIMIT = 64 * 1024
PAGE = 4096
PF_KTHREAD = 0x00200000


def _drgn():
    try:
        import drgn
    except ImportError:  # pragma: no cover - drgn is a dependency
        raise RefusedError("drgn is not installed (pip install drgn)") from None
    return drgn


# -- opening a program -------------------------------------------------------------------------

def open_program(vmcore: str | None = None, qemu: str | None = None,
                 vmlinux: str | None = None):
    """(program, limits): a drgn ``Program`` on the kernel of `vmcore`, of the QEMU guest
    behind the QMP socket `qemu`, or of the running kernel, with debug info from `vmlinux` or
    drgn's usual search.  Without any DWARF (and no `vmlinux` named) the program resolves
    kallsyms only and `limits` says what is missing and how to get it.
    Raises :class:`KmltraceError` with one line that says what is missing."""
    drgn = _drgn()
    if vmlinux is not None and not Path(vmlinux).is_file():
        raise InputError("no such file", path=str(vmlinux))
    # drgn logs its own warnings (missing modules, ignored files) on stderr: our one-line
    # errors say the same, so keep stderr to those
    logging.getLogger("drgn").setLevel(logging.CRITICAL)
    prog = drgn.Program()
    # local files only: debuginfod would send the build ID to a server
    if "standard" in getattr(prog, "registered_debug_info_finders", lambda: ())():
        prog.set_enabled_debug_info_finders(["standard"])
    if vmcore is not None:
        where = str(vmcore)
        _set_core_dump(prog, Path(vmcore))
    elif qemu is not None:
        where = str(qemu)
        if not hasattr(prog, "set_qemu_qmp"):
            raise RefusedError(f"drgn {drgn.__version__} cannot attach to QEMU over QMP "
                               "(Program.set_qemu_qmp): install drgn >= 0.0.31", path=where)
        try:
            prog.set_qemu_qmp(where)
        except (OSError, ValueError, drgn.FaultError) as e:
            raise InputError(f"cannot attach to the QEMU guest over QMP: {e}", path=where) from None
    else:
        where = str(KCORE)
        if not KCORE.exists():
            raise RefusedError("does not exist (kernel built without CONFIG_PROC_KCORE?): "
                               "use --vmcore FILE or --qemu SOCKET", path=where)
        if os.geteuid() != 0:
            raise RefusedError("reading the running kernel needs root", path=where)
        try:
            prog.set_kernel()
        except (OSError, ValueError) as e:
            raise RefusedError(f"cannot open the running kernel: {e}", path=where) from None
    if not prog.flags & drgn.ProgramFlags.IS_LINUX_KERNEL:
        raise InputError("not a Linux kernel dump: no VMCOREINFO (a QEMU guest needs "
                         "-device vmcoreinfo and the qemu_fw_cfg module loaded)", path=where)
    try:
        _load_debug_info(prog, vmlinux, where)
    except NoDwarf as missing:
        if not use_kallsyms(prog):
            raise InputError(f"{missing.message}; kallsyms is not readable either",
                             path=where) from None
        return prog, [missing.message + ": IDT, TSS and per-CPU bases from kallsyms and the "
                      "hardware layouts (no exception-stack ranges)"]
    return prog, []


class NoDwarf(InputError):
    """No debug info for the kernel was found (none was named)."""


def _set_core_dump(prog, path: Path) -> None:
    drgn = _drgn()
    if not path.is_file():
        raise InputError("no such file", path=str(path))
    with path.open("rb") as f:
        head = f.read(4)
    shown = path
    if head == b"\x28\xb5\x2f\xfd":   # zstd: what `collect --vm` keeps; drgn reads plain files
        path = _inflate(path)
        with path.open("rb") as f:
            head = f.read(4)
    if head == b"\x7fELF":
        _check_elf_complete(path, shown)
    try:
        prog.set_core_dump(str(path))
    except (OSError, ValueError, drgn.FaultError) as e:
        if "unrecognized QEMU memory dump" in str(e):
            raise InputError("QEMU memory dump without VMCOREINFO: run the guest with -device "
                             "vmcoreinfo and load its qemu_fw_cfg module before dumping",
                             path=str(shown)) from None
        raise InputError(f"not a usable vmcore: {e}", path=str(shown)) from None


def _check_elf_complete(path: Path, shown: Path) -> None:
    """A truncated ELF dump: its program headers describe more bytes than the file has."""
    size = path.stat().st_size
    with path.open("rb") as f:
        header = f.read(64)
        if len(header) < 64 or header[4] != 2:
            return   # not ELF64: drgn says what it is
        phoff, = struct.unpack_from("<Q", header, 32)
        phentsize, phnum = struct.unpack_from("<HH", header, 54)
        if phentsize < 56:
            return   # not a 64-bit program header table: drgn says what is wrong
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    end = 0
    for i in range(len(table) // phentsize):
        _, _, offset, _, _, filesz = struct.unpack_from("<IIQQQQ", table, i * phentsize)
        end = max(end, offset + filesz)
    if len(table) < phentsize * phnum or end > size:
        packed = shown != path
        raise InputError(f"truncated dump: its ELF headers describe {max(end, phoff)} bytes, "
                         f"the {'decompressed ' if packed else ''}file has {size}",
                         path=str(shown), offset=None if packed else size)


def _inflate(path: Path) -> Path:
    import zstandard

    out = tempfile.NamedTemporaryFile(prefix="kmltrace-vmcore-", suffix=".elf", delete=False)
    try:
        with path.open("rb") as src, out:
            zstandard.ZstdDecompressor().copy_stream(src, out)
    except zstandard.ZstdError as e:
        os.unlink(out.name)
        raise InputError(f"corrupt zstd vmcore: {e}", path=str(path)) from None
    # drgn keeps the file open: unlinking now frees it when the program goes
    prog_path = Path(out.name)
    import atexit
    atexit.register(lambda: prog_path.unlink(missing_ok=True))
    return prog_path


def _load_debug_info(prog, vmlinux: str | None, where: str) -> None:
    drgn = _drgn()
    release = _vmcoreinfo_release(prog)
    try:
        if vmlinux is not None:
            prog.load_debug_info([str(vmlinux)], main=True)
        else:
            prog.load_debug_info(main=True, default=False)
    except drgn.MissingDebugInfoError:
        if vmlinux is not None:
            raise InputError(f"is not the vmlinux of this kernel ({release}: its build ID does "
                             "not match) or has no DWARF", path=str(vmlinux)) from None
        raise NoDwarf(f"no debug info for kernel {release}: install its debug package "
                      f"(Debian: linux-image-{release}-dbg; Fedora: kernel-debuginfo) or "
                      "pass --vmlinux FILE", path=where) from None
    except (OSError, ValueError) as e:
        raise InputError(f"cannot load debug info: {e}", path=str(vmlinux or where)) from None


def _vmcoreinfo_release(prog) -> str:
    """The release VMCOREINFO names (drgn serves ``UTS_RELEASE`` before any debug info)."""
    try:
        return kernel_release(prog)
    except (LookupError, ValueError):
        return "?"


# -- kernel ------------------------------------------------------------------------------------

def kernel_release(prog) -> str:
    """``init_uts_ns.name.release`` (what ``uname -r`` prints)."""
    return prog["UTS_RELEASE"].string_().decode(errors="replace")


def find_kml_symbols(prog) -> list[str]:
    """The KML entry symbols (``kml_call_entry``, ``kml_switch_stack``...) this kernel has."""
    found = []
    for name in KML_SYMBOLS:
        try:
            prog.symbol(name)
            found.append(name)
        except LookupError:
            continue
    return found


def kaslr_offset(prog) -> int | None:
    try:
        from drgn.helpers.linux.boot import kaslr_offset as drgn_kaslr_offset
        return int(drgn_kaslr_offset(prog))
    except (ImportError, LookupError, ValueError):
        return None


def for_each_cpu(prog):
    """The possible CPUs (a dump has every possible CPU's per-CPU data)."""
    from drgn.helpers.linux.cpumask import for_each_possible_cpu

    return list(for_each_possible_cpu(prog))


def per_cpu_gs_base(prog, cpu: int) -> int:
    """The kernel's GS base on `cpu`: ``__per_cpu_offset[cpu]`` (``%gs:var`` addresses
    ``var``'s link address plus this base, zero-based per-CPU section or not)."""
    return int(prog["__per_cpu_offset"][cpu])


# -- IDT ---------------------------------------------------------------------------------------

def for_each_idt_gate(prog) -> list[dict]:
    """The 256 gates of ``idt_table`` as the snapshot object's ``idt`` list, each with the
    handler's symbol; decoded from the table's raw bytes by :mod:`kmltrace.analysis.idt`."""
    gates = decode_gates(kallsyms_snapshot.idt_bytes(prog))
    for gate in gates:
        gate["symbol"] = symbol_of(prog, int(gate["handler"], 16))
    return gates


def symbol_of(prog, address: int) -> str | None:
    try:
        symbol = prog.symbol(address)
    except LookupError:
        return None
    offset = address - symbol.address
    return symbol.name if offset == 0 else f"{symbol.name}+{offset:#x}"


# -- per CPU: TSS and exception stacks ---------------------------------------------------------

def tss_of_cpu(prog, cpu: int):
    """``struct tss_struct`` of `cpu` (``cpu_tss_rw`` since v4.15's entry-area rework, which
    renamed the per-CPU ``cpu_tss``)."""
    from drgn.helpers.linux.percpu import per_cpu

    try:
        return per_cpu(prog["cpu_tss_rw"], cpu)
    except KeyError:
        return per_cpu(prog["cpu_tss"], cpu)


def tss_stack_pointers(tss) -> dict:
    x86 = tss.x86_tss
    return {"sp0": hexstr(x86.sp0), "sp1": hexstr(x86.sp1), "sp2": hexstr(x86.sp2),
            "ist": [hexstr(x86.ist[i]) for i in range(7)]}


def exception_stacks_of_cpu(prog, cpu: int) -> dict[str, list[str]]:
    """``{"DF": [lo, hi], "NMI": ..., "DB": ..., "MCE": ..., "VC": ...}`` for `cpu`: the
    ``*_stack`` members of its ``cea_exception_stacks`` (v5.2's "x86/exceptions: Add structs
    for exception stacks"; zero-size stacks, such as #VC without AMD SEV, left out).  Older
    kernels: the per-CPU ``exception_stacks`` array as one ``"all"`` range.  The TSS itself is
    listed as ``"TSS"`` because KML 4.0 puts its 128-byte IST 5 stack inside it."""
    from drgn import sizeof
    from drgn.helpers.linux.percpu import per_cpu

    out = {}
    try:
        estacks = per_cpu(prog["cea_exception_stacks"], cpu)[0]
        for member in estacks.type_.members:
            size = sizeof(member.type)
            if not member.name.endswith("_stack") or not size:
                continue
            lo = int(estacks.address_) + member.bit_offset // 8
            out[member.name.removesuffix("_stack")] = [hexstr(lo), hexstr(lo + size)]
    except (KeyError, LookupError, AttributeError):
        try:
            stacks = per_cpu(prog["exception_stacks"], cpu)
            lo = int(stacks.address_)
            out["all"] = [hexstr(lo), hexstr(lo + sizeof(stacks))]
        except (KeyError, LookupError):
            pass
    tss = tss_of_cpu(prog, cpu)
    out["TSS"] = [hexstr(tss.address_), hexstr(tss.address_ + sizeof(tss))]
    return out


def is_mapped(prog, address: int) -> bool:
    """Whether the kernel can read the 8 bytes below `address` (an IST top: its first push)."""
    drgn = _drgn()
    try:
        prog.read(address - 8, 8)
        return True
    except drgn.FaultError:
        return False


def cpu_snapshot(prog, cpu: int) -> dict:
    from drgn.helpers.linux.sched import cpu_curr

    tss = tss_stack_pointers(tss_of_cpu(prog, cpu))
    out = {"cpu": cpu, "tss": tss, "exception_stacks": exception_stacks_of_cpu(prog, cpu),
           "ist_mapped": [bool(int(v, 16)) and is_mapped(prog, int(v, 16)) for v in tss["ist"]],
           "gs_base": hexstr(per_cpu_gs_base(prog, cpu))}
    try:
        out["current_pid"] = int(cpu_curr(prog, cpu).pid)
    except (LookupError, AttributeError, _drgn().FaultError):
        pass
    return out


def cpu_snapshot_untyped(prog, cpu: int) -> dict:
    """:func:`cpu_snapshot` from kallsyms and the hardware TSS layout (no DWARF)."""
    base = kallsyms_snapshot.per_cpu_offsets(prog, cpu + 1)[cpu]
    _, tss = kallsyms_snapshot.tss_of_cpu(prog, base)
    return {"cpu": cpu, "tss": tss,
            "ist_mapped": [bool(int(v, 16)) and is_mapped(prog, int(v, 16)) for v in tss["ist"]],
            "gs_base": hexstr(base)}


# -- tasks -------------------------------------------------------------------------------------

def task_pt_regs(task):
    """``struct pt_regs *`` at the top of `task`'s kernel stack (x86-64 ``task_pt_regs``:
    no TOP_OF_KERNEL_STACK_PADDING on 64-bit)."""
    from drgn import Object, cast

    prog = task.prog_
    top = int(task.stack) + prog["THREAD_SIZE"].value_()
    regs_type = prog.type("struct pt_regs")
    return cast(prog.pointer_type(regs_type), Object(prog, "unsigned long", top - regs_type.size))


def task_thread_flags(task) -> int:
    """``task_thread_info(task)->flags`` (thread_info in task_struct since v4.9's
    CONFIG_THREAD_INFO_IN_TASK on x86; before, at the bottom of the stack)."""
    try:
        return int(task.thread_info.flags)
    except AttributeError:
        from drgn import cast
        prog = task.prog_
        return int(cast(prog.type("struct thread_info *"), task.stack).flags)


def task_segment_bases(task) -> tuple[int | None, int | None]:
    """Saved (fs base, gs base) of `task` (``thread.fsbase``/``gsbase`` since v4.7;
    ``thread.fs``/``gs`` before). Stale while the task runs: saved at context switch."""
    thread = task.thread
    for fs, gs in (("fsbase", "gsbase"), ("fs", "gs")):
        try:
            return int(getattr(thread, fs)), int(getattr(thread, gs))
        except AttributeError:
            continue
    return None, None


def task_exe(task) -> str | None:
    from drgn.helpers.linux.fs import d_path

    try:
        exe_file = task.mm.exe_file
        if not exe_file:
            return None
        return d_path(exe_file.f_path).decode(errors="backslashreplace")
    except (AttributeError, LookupError, ValueError):
        return None


def stack_vma_of_task(task, sp: int):
    """The VMA holding `sp` in `task`'s mm, else the one holding ``mm->start_stack``
    (so a sp that left its stack still names the stack it left); None without one."""
    from drgn.helpers.linux.mm import vma_find

    mm = task.mm
    for address in (sp, int(mm.start_stack)):
        vma = vma_find(mm, address)
        if vma and int(vma.vm_start) <= address < int(vma.vm_end):
            return vma
    return None


def mapped_bytes_below(task, sp: int, limit: int = MAPPED_BELOW_LIMIT) -> int:
    """How many bytes below `sp` are backed by present pages in `task`'s page tables before
    the first unmapped page (capped at `limit`): the room a push at CPL 0 has."""
    from drgn.helpers.linux.mm import follow_phys

    drgn = _drgn()
    mm = task.mm
    page = sp & ~(PAGE - 1)
    while sp - page < limit:
        try:
            follow_phys(mm, page)
        except drgn.FaultError:
            return max(sp - (page + PAGE), 0)
        page -= PAGE
    return limit


def task_snapshot(task, kml: bool, errors: list) -> dict:
    from drgn.helpers.linux.sched import task_cpu, task_state_to_char

    drgn = _drgn()
    out = {"pid": int(task.pid), "tgid": int(task.tgid),
           "comm": task.comm.string_().decode(errors="backslashreplace")}
    try:
        out["state"] = task_state_to_char(task)
        out["cpu"] = int(task_cpu(task))
        flags = task_thread_flags(task)
        out["thread_flags"] = hexstr(flags)
        kthread = not task.mm or bool(int(task.flags) & PF_KTHREAD)
        cs = ss = None
        if not kthread:
            regs = task_pt_regs(task)
            cs, ss = int(regs.cs), int(regs.ss)
            sp = int(regs.sp)
            out.update(cs=hexstr(cs), ss=hexstr(ss), ip=hexstr(regs.ip), sp=hexstr(sp),
                       rflags=hexstr(regs.flags))
            fs_base, gs_base = task_segment_bases(task)
            out.update(fs_base=hexstr(fs_base), gs_base=hexstr(gs_base))
            out["exe"] = task_exe(task)
            vma = stack_vma_of_task(task, sp)
            if vma is not None:
                lo, hi = int(vma.vm_start), int(vma.vm_end)
                out["stack_vma"] = [hexstr(lo), hexstr(hi)]
                out["sp_in_stack_vma"] = lo <= sp < hi
            else:
                out["sp_in_stack_vma"] = False
            out["sp_mapped_below"] = mapped_bytes_below(task, sp)
        out["mode"], out["evidence"] = task_mode(cs, flags, kthread, kml)
    except drgn.FaultError as e:
        errors.append(f"task {out['pid']} ({out['comm']}): cannot read {e}")
        out.setdefault("mode", "unknown")
    return {k: v for k, v in out.items() if v is not None}


def for_each_task_snapshot(prog, kml: bool, errors: list) -> list[dict]:
    from drgn.helpers.linux.pid import for_each_task

    return [task_snapshot(task, kml, errors) for task in for_each_task(prog)]


# -- the whole snapshot ------------------------------------------------------------------------

def take_snapshot(prog, source: str, limits: list[str] = ()) -> dict:
    """The snapshot object of CONTRACT.md for `prog` (see docs/snapshot.md), incidents included.
    Reads that fail (a truncated dump) are listed under ``"errors"``; the rest is kept.
    With `limits` (no DWARF), only what kallsyms and the hardware layouts give."""
    drgn = _drgn()
    errors: list[str] = []
    release = kernel_release(prog)
    typed = not limits
    cpus = []
    for cpu in for_each_cpu(prog) if typed else range(kallsyms_snapshot.nr_cpu_ids(prog)):
        try:
            cpus.append(cpu_snapshot(prog, cpu) if typed else cpu_snapshot_untyped(prog, cpu))
        except drgn.FaultError as e:
            errors.append(f"cpu {cpu}: cannot read {e}")
    try:
        idt = for_each_idt_gate(prog)
    except drgn.FaultError as e:
        errors.append(f"idt_table: cannot read {e}")
        idt = []
    symbols = find_kml_symbols(prog)
    kml, evidence = kml_evidence(release, symbols, idt)
    offset = kaslr_offset(prog)
    snapshot = {
        "kernel": {"release": release, "kml": kml, "kml_evidence": evidence, "cpus": len(cpus),
                   "kaslr_offset": hexstr(offset), "tif_ku_bit": TIF_KU.bit_length() - 1},
        "source": source,
        "cpus": cpus,
        "idt": idt,
        "tasks": (for_each_task_snapshot(prog, kml, errors) if typed
                  else _tasks_from_btf(prog, kml, errors, limits := list(limits))),
    }
    if limits:
        snapshot["limits"] = limits
    snapshot["incidents"] = [i.to_json() for i in check_snapshot(snapshot)]
    if errors:
        snapshot["errors"] = errors
    return snapshot


def _tasks_from_btf(prog, kml: bool, errors: list, limits: list) -> list[dict]:
    """Tasks read with the kernel's own BTF when there is no DWARF; the limits say which."""
    from kmltrace.collectors.btf import BtfError

    try:
        btf = kallsyms_snapshot.load_btf(prog)
        tasks = kallsyms_snapshot.for_each_task_btf(prog, btf, kml, errors, MAPPED_BELOW_LIMIT)
    except (LookupError, BtfError, _drgn().FaultError) as e:
        limits.append(f"no tasks: the kernel's BTF is not usable ({e})")
        return []
    limits.append("tasks from the kernel's BTF: thread-group leaders only, without exe, "
                  "state, stack VMA")
    return tasks


def snapshot(vmcore: str | None = None, qemu: str | None = None,
             vmlinux: str | None = None) -> dict:
    """Open the source and take its snapshot (see :func:`open_program`, :func:`take_snapshot`)."""
    drgn = _drgn()
    prog, limits = open_program(vmcore=vmcore, qemu=qemu, vmlinux=vmlinux)
    source = vmcore or (f"qmp:{qemu}" if qemu else str(KCORE))
    try:
        return take_snapshot(prog, str(source), limits)
    except drgn.FaultError as e:
        raise InputError(f"cannot read kernel memory (truncated or incomplete dump?): {e}",
                         path=str(vmcore or qemu or KCORE)) from None
    except LookupError as e:
        raise KmltraceError(f"this kernel lacks what the snapshot reads: {e}",
                            path=str(vmcore or qemu or KCORE)) from None


# -- vmcore TARGETs ----------------------------------------------------------------------------

def has_vmcoreinfo(path: Path) -> bool:
    """Whether the ELF dump at `path` (or its zstd) carries a VMCOREINFO note: a Linux kernel
    drgn can read (QEMU adds one with -device vmcoreinfo and qemu_fw_cfg loaded)."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
        if head[:4] == b"\x28\xb5\x2f\xfd":
            import zstandard
            head = zstandard.ZstdDecompressor().decompressobj().decompress(head)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            return False
        phoff, = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        for i in range(phnum):
            kind, _, offset, _, _, size = struct.unpack_from("<IIQQQQ", head, phoff + i * phentsize)
            if kind == 4 and b"VMCOREINFO" in head[offset:offset + size]:
                return True
    except (OSError, struct.error, ValueError, ImportError, IndexError):
        return False
    except Exception:  # zstandard.ZstdError: the vmcore parser reports a corrupt dump
        return False
    return False


def enrich_vmcore_inputs(capture) -> None:
    """Give every Linux vmcore TARGET (one with VMCOREINFO) the drgn snapshot, tasks included,
    in place of the IDT/TSS-only one the raw dump gives; with the capture's vmlinux, or
    kallsyms and BTF without one.  A snapshot that cannot be taken leaves the input as it was,
    with the reason in ``meta["drgn_snapshot_error"]``."""
    for parsed in capture.inputs:
        if parsed.format != "vmcore" or not has_vmcoreinfo(Path(parsed.path)):
            continue
        try:
            snap = snapshot(vmcore=parsed.path, vmlinux=capture.vmlinux)
        except KmltraceError as e:
            parsed.meta["drgn_snapshot_error"] = str(e)
            continue
        parsed.meta["snapshot"] = snap
