"""The /trusted audit: what each ELF meant for kernel mode would do there.

KML runs programs under /trusted at CPL 0. A 32-bit program cannot run there; a program that
changes its GS base (``wrgsbase``, ``mov`` to ``%gs``, ``swapgs``, ``wrmsr`` to the GS base
MSRs, or ``arch_prctl(ARCH_SET_GS)``) breaks the kernel's per-CPU base that KML keeps in both
GS MSRs; a program that enters the kernel with ``syscall`` works but gains nothing. The sites
are found by a linear sweep of the executable sections with capstone, as ``objdump -d`` does.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kmltrace.analysis.incidents import Incident, evidence
from kmltrace.errors import InputError, KmltraceError
from kmltrace.output import hexstr
from kmltrace.symbols.readers import object_ranges, open_elf, read_elf

ARCH_SET_GS = 0x1001
SYS_ARCH_PRCTL = 158
MSR_GS_BASES = {0xC0000101, 0xC0000102}       # MSR_GS_BASE, MSR_KERNEL_GS_BASE
_REG = {name: fam for fam, names in {
    "ax": ("rax", "eax", "ax", "al"), "di": ("rdi", "edi", "di", "dil"),
    "si": ("rsi", "esi", "si", "sil"), "cx": ("rcx", "ecx", "cx", "cl"),
    "bx": ("rbx", "ebx", "bx", "bl")}.items() for name in names}
_IMM = re.compile(r"^(\w+), (0x[0-9a-f]+|\d+)$")
_RIP_SLOT = re.compile(r"\[rip \+ (0x[0-9a-f]+)\]")
# the straight-line state ends at an unconditional transfer; a call keeps it, because gcc's
# interprocedural register allocation keeps an argument register live across a local call
_STOPS = {"ret", "jmp", "iret", "iretd", "iretq", "sysret", "hlt", "ud2"}


@dataclass
class Audit:
    binaries: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    errors: list[KmltraceError] = field(default_factory=list)      # unreadable, damaged
    warnings: list[KmltraceError] = field(default_factory=list)    # symlink loops not followed
    incidents: list[Incident] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"binaries": self.binaries, "incidents": [i.to_json() for i in self.incidents],
                "skipped": self.skipped, "errors": [str(e) for e in self.errors],
                "warnings": [str(w) for w in self.warnings]}


# -- walking ---------------------------------------------------------------------------------------

def walk(paths: list[str | Path]) -> Iterator[tuple[str, Path, object]]:
    """("file", path, None) | ("skip", path, reason) | ("error" or "loop", path, KmltraceError),
    in order.
    Directories are walked (symlinks followed, each directory and file once: a symlink loop
    is one error line and the walk goes on)."""
    seen_dirs: set = set()
    seen_files: dict = {}
    for p in paths:
        yield from _walk(Path(p), seen_dirs, seen_files)


def _walk(path: Path, seen_dirs: set, seen_files: dict):
    try:
        st = path.stat()
    except OSError as e:
        yield "error", path, InputError(f"cannot read: {e.strerror or e}", path=str(path))
        return
    key = (st.st_dev, st.st_ino)
    if stat.S_ISDIR(st.st_mode):
        if key in seen_dirs:
            yield "loop", path, InputError("symlink loop: this directory is already being "
                                           "walked; not followed", path=str(path))
            return
        seen_dirs.add(key)
        try:
            entries = sorted(os.listdir(path))
        except OSError as e:
            yield "error", path, InputError(f"cannot list: {e.strerror or e}", path=str(path))
            return
        for name in entries:
            yield from _walk(path / name, seen_dirs, seen_files)
    elif stat.S_ISREG(st.st_mode):
        if key in seen_files:
            yield "skip", path, f"same file as {seen_files[key]}"
        else:
            seen_files[key] = str(path)
            yield "file", path, None
    else:
        yield "skip", path, "not a regular file"


# -- one ELF ---------------------------------------------------------------------------------------

def audit_paths(paths: list[str | Path]) -> Audit:
    result = Audit()
    for kind, path, detail in walk(paths):
        if kind == "error":
            result.errors.append(detail)
        elif kind == "loop":
            result.warnings.append(detail)
        elif kind == "skip":
            result.skipped.append({"path": str(path), "reason": detail})
        else:
            try:
                with open(path, "rb") as f:
                    magic = f.read(4)
            except OSError as e:
                result.errors.append(InputError(f"cannot read: {e.strerror or e}", path=str(path)))
                continue
            if magic != b"\x7fELF":
                result.skipped.append({"path": str(path), "reason": "not an ELF"})
                continue
            try:
                info = audit_elf(path)
            except KmltraceError as e:
                result.errors.append(e)
                continue
            result.binaries.append(info)
            result.incidents.extend(incidents_of(info))
    return result


def audit_elf(path: Path) -> dict:
    """Class, machine, linking, libc, GS-writing sites and kernel-entry counts of one ELF."""
    try:
        return _audit_elf(Path(path))
    except KmltraceError:
        raise
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as e:   # pyelftools/capstone on a damaged file: one line, the walk goes on
        raise InputError(f"damaged ELF: {type(e).__name__}: {e}", path=str(path)) from None


def _audit_elf(path: Path) -> dict:
    f, elf = open_elf(path)
    with f:
        segments = list(elf.iter_segments())
        interp = next((s.get_interp_name() for s in segments if s["p_type"] == "PT_INTERP"), None)
        needed = _needed(elf)
        dynamic = any(s["p_type"] == "PT_DYNAMIC" for s in segments)
        info = {
            "path": str(path), "class": f"ELF{elf.elfclass}", "machine": elf["e_machine"],
            "type": elf["e_type"], "static": interp is None and not needed,
            "pie": elf["e_type"] == "ET_DYN" and dynamic, "interpreter": interp,
            "needed": needed, "libc": _libc(needed, interp),
        }
        if elf["e_machine"] not in ("EM_X86_64", "EM_386"):
            info.update(gs_writes=[], kernel_entries=None,
                        note="not x86: no disassembly")
            return info
        code = _code_regions(f, elf, path)
        plt_names = _plt_names(f, elf, code, path)
        try:
            symbols = read_elf(path)
        except KmltraceError:
            symbols = None
        try:
            objects = object_ranges(path)
        except KmltraceError:
            objects = None
        sites, counts, in_data = _scan(code, elf.elfclass, plt_names, symbols, objects)
    if info["static"] and symbols is not None and info["libc"] is None:
        info["libc"] = _static_libc(symbols)
    info["gs_writes"] = sites
    info["kernel_entries"] = counts
    info["sites_in_data_objects"] = in_data      # decoded from data tables: not counted
    return info


def _needed(elf) -> list[str]:
    section = elf.get_section_by_name(".dynamic")
    if section is None or not hasattr(section, "iter_tags"):
        return []
    return [str(t.needed) for t in section.iter_tags() if t.entry.d_tag == "DT_NEEDED"]


def _libc(needed: list[str], interp: str | None) -> str | None:
    for name in needed:
        if name.startswith(("libc.so", "libc.musl", "ld-musl")):
            return name
    if interp and "musl" in interp:
        return Path(interp).name
    return None


def _static_libc(symbols) -> str | None:
    """The libc linked into a static program, told by a function only it has."""
    if symbols.address_of("__libc_setup_tls") is not None:
        return "glibc (static)"
    if symbols.address_of("__init_libc") is not None:
        return "musl (static)"
    return None


def _code_regions(f, elf, path: Path) -> list[tuple[str, int, bytes]]:
    """(name, address, bytes) of the executable sections (PF_X segments when there are no
    section headers, as in a stripped-to-the-bone binary)."""
    size = os.fstat(f.fileno()).st_size
    regions = []
    for s in elf.iter_sections():
        if s["sh_type"] == "SHT_PROGBITS" and s["sh_flags"] & 0x4 and s["sh_size"]:
            if s["sh_offset"] + s["sh_size"] > size:
                raise InputError(f"section {s.name} runs past the end of the file",
                                 path=str(path), offset=s["sh_offset"])
            f.seek(s["sh_offset"])
            regions.append((s.name, s["sh_addr"], f.read(s["sh_size"])))
    if not regions:
        for seg in elf.iter_segments():
            if seg["p_type"] == "PT_LOAD" and seg["p_flags"] & 0x1 and seg["p_filesz"]:
                if seg["p_offset"] + seg["p_filesz"] > size:
                    raise InputError("executable segment runs past the end of the file",
                                     path=str(path), offset=seg["p_offset"])
                f.seek(seg["p_offset"])
                regions.append(("PT_LOAD", seg["p_vaddr"], f.read(seg["p_filesz"])))
    return regions


def _disassembler(elfclass: int):
    import capstone
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64 if elfclass == 64 else capstone.CS_MODE_32)
    md.skipdata = True          # like objdump's "(bad)": step over and go on
    return md


#: bytes per capstone call: its Python binding decodes a whole buffer into C memory at once
#: (gigabytes for a 20 MB .text), so the sweep goes chunk by chunk
SWEEP_CHUNK = 1 << 16
MAX_INSN = 15


def sweep(md, data: bytes, start: int):
    """(address, size, mnemonic, operands) of a linear sweep over `data` mapped at `start`,
    identical to one capstone call over the whole buffer but in bounded memory: an
    instruction that ends within MAX_INSN bytes of a chunk's end is decoded again with the
    next chunk."""
    pos, n = 0, len(data)
    while pos < n:
        end = min(pos + SWEEP_CHUNK, n)
        resume = end
        for insn in md.disasm_lite(data[pos:end], start + pos):
            if end < n and insn[0] - start + insn[1] > end - MAX_INSN - 1:
                resume = insn[0] - start
                break
            yield insn
        pos = resume


def _plt_names(f, elf, code, path: Path) -> dict[int, str]:
    """PLT entry address -> the imported function it jumps to (through its GOT slot)."""
    slots: dict[int, str] = {}
    for section in elf.iter_sections():
        if section["sh_type"] not in ("SHT_RELA", "SHT_REL") or not hasattr(section, "iter_relocations"):
            continue
        try:
            symtab = elf.get_section(section["sh_link"])
        except Exception:
            continue
        if not hasattr(symtab, "get_symbol"):
            continue
        for rel in section.iter_relocations():
            if rel["r_info_sym"]:
                slots[rel["r_offset"]] = symtab.get_symbol(rel["r_info_sym"]).name
    if not slots:
        return {}
    md = _disassembler(elf.elfclass)
    out = {}
    for name, addr, data in code:
        if not name.startswith(".plt"):
            continue
        for a, size, mnem, ops in sweep(md, data, addr):
            m = _RIP_SLOT.search(ops) if mnem == "jmp" else None
            if m:
                slot = a + size + int(m.group(1), 16)
                if slot in slots:
                    out[a & ~0xF] = slots[slot]
    return out


def _in_data(address: int, objects) -> bool:
    if objects is None or not len(objects[0]):
        return False
    i = int(np.searchsorted(objects[0], np.uint64(address), side="right")) - 1
    return i >= 0 and address < int(objects[1][i])


def _scan(code, elfclass: int, plt_names: dict[int, str], symbols, objects=None
          ) -> tuple[list[dict], dict, int]:
    """One linear sweep: GS-writing sites and the kernel-entry instruction counts. What lies
    inside a data object (a table that a compiler or OpenSSL put in .text) is data, not a
    site: it is only counted, apart (the third value)."""
    md = _disassembler(elfclass)
    counts = {"syscall": 0, "sysenter": 0, "int80": 0}
    in_data = 0
    sites: list[dict] = []
    for _name, start, data in code:
        regs: dict[str, int] = {}
        for a, size, mnem, ops in sweep(md, data, start):
            kind, entry = None, None
            if mnem == "syscall":
                entry = "syscall"
                if regs.get("ax") == SYS_ARCH_PRCTL and regs.get("di") == ARCH_SET_GS:
                    kind = "arch_prctl(ARCH_SET_GS) by syscall"
            elif mnem == "sysenter":
                entry = "sysenter"
            elif mnem == "int" and ops == "0x80":
                entry = "int80"
            elif mnem in ("wrgsbase", "swapgs", "lgs") or (mnem == "pop" and ops == "gs"):
                kind = mnem if mnem != "pop" else "pop %gs"
            elif mnem == "mov" and ops.startswith("gs,"):
                kind = "mov to %gs"
            elif mnem == "wrmsr" and regs.get("cx") in MSR_GS_BASES:
                kind = "wrmsr to a GS base MSR"
            elif mnem == "call":
                kind = _call_kind(ops, regs, plt_names, symbols)
            if (kind or entry) and _in_data(a, objects):    # checked only for the rare hits
                in_data += 1
            else:
                if entry:
                    counts[entry] += 1
                if kind:
                    sites.append(_site(a, kind, mnem, ops, symbols, plt_names))
            _track(mnem, ops, regs)
    return sites, counts, in_data


def _site(address: int, kind: str, mnem: str, ops: str, symbols, plt_names) -> dict:
    """One GS-writing site: address, what it does, the instruction (a call with its target's
    name, as objdump prints it) and the function holding it."""
    text = f"{mnem} {ops}".strip()
    if mnem == "call":
        try:
            target = int(ops, 16)
        except ValueError:
            target = None
        name = plt_names.get(target)
        if name:
            text += f" <{name}@plt>"
        elif target is not None and symbols is not None and symbols.symbolize(target):
            text += f" <{symbols.symbolize(target).split('/')[0].removesuffix('+0x0')}>"
    site = {"address": hexstr(address), "kind": kind, "instruction": text,
            "symbol": symbols.symbolize(address) if symbols is not None else None}
    if site["symbol"] is None and symbols is not None and \
            symbols.meta.get("symbols_from") == "SHT_SYMTAB":
        # a full symbol table and no function here: most likely data in a code section
        site["outside_functions"] = True
    return site


def _call_kind(ops: str, regs: dict, plt_names: dict[int, str], symbols) -> str | None:
    try:
        target = int(ops, 16)
    except ValueError:
        return None
    name = plt_names.get(target)
    if name is None and symbols is not None:     # a static program calls libc's own function
        text = symbols.symbolize(target)
        name = text.split("+")[0] if text and "+0x0/" in text else None
    if name in ("arch_prctl", "__arch_prctl") and regs.get("di") == ARCH_SET_GS:
        return "arch_prctl(ARCH_SET_GS) call"
    if name == "syscall" and regs.get("di") == SYS_ARCH_PRCTL and regs.get("si") == ARCH_SET_GS:
        return "syscall(SYS_arch_prctl, ARCH_SET_GS) call"
    return None


def _track(mnem: str, ops: str, regs: dict) -> None:
    """Immediates last loaded into ax/di/si/cx/bx (a heuristic, like a reader's eye: the
    straight line before the site); forget on another write or an unconditional transfer."""
    if mnem in _STOPS:
        regs.clear()
        return
    if mnem == "call":      # the return value lands in ax
        regs.pop("ax", None)
        return
    dest = ops.split(",", 1)[0].strip()
    fam = _REG.get(dest)
    if fam is None:
        return
    m = _IMM.match(ops)
    if mnem == "mov" and m:
        regs[fam] = int(m.group(2), 0)
    elif mnem == "xor" and ops == f"{dest}, {dest}":
        regs[fam] = 0
    elif "," in ops or mnem in ("pop", "inc", "dec", "neg", "not"):
        regs.pop(fam, None)


# -- incidents ---------------------------------------------------------------------------------------

def incidents_of(info: dict) -> list[Incident]:
    path = info["path"]
    out = []
    if info["class"] == "ELF32":
        out.append(Incident(
            "elf32_in_trusted", f"{path}: 32-bit program ({info['machine']}): it cannot run in "
            "kernel mode", evidence=[evidence(path, f"{info['class']} {info['machine']} {info['type']}")],
            explanation="KML runs /trusted programs at CPL 0 in the 64-bit kernel; a 32-bit "
            "program's segments and system calls (int $0x80) do not work there.",
            extra={"path": path}))
    sites = info.get("gs_writes") or []
    if sites:
        first = sites[0]
        where = f"{first['symbol']} ({first['address']})" if first.get("symbol") else first["address"]
        out.append(Incident(
            "gs_write", f"{path}: {len(sites)} GS-writing site(s), first {first['kind']} at {where}",
            evidence=[evidence(path, f"{s['address']} {s.get('symbol') or '?'}: {s['instruction']} "
                                     f"({s['kind']})" + (", outside every function: likely data"
                                                         if s.get("outside_functions") else ""),
                               address=s["address"]) for s in sites],
            explanation="Under KML both GS base MSRs hold the kernel's per-CPU base while a "
            "kernel-mode program runs; a program that sets its own GS base corrupts the "
            "kernel's per-CPU data on the next interrupt.",
            extra={"path": path}))
    counts = info.get("kernel_entries") or {}
    if counts.get("syscall") or counts.get("sysenter") or counts.get("int80"):
        out.append(Incident(
            "syscall_sites", f"{path}: enters the kernel with syscall x{counts['syscall']}, "
            f"sysenter x{counts['sysenter']}, int $0x80 x{counts['int80']}",
            evidence=[evidence(path, ", ".join(f"{k}: {v}" for k, v in counts.items()))],
            explanation="Under KML these work but gain nothing: a kernel-mode program saves "
            "the mode switch only when it calls the kernel directly.",
            extra={"path": path}))
    return out
