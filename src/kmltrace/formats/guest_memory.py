"""Guest memory dumps: the ELF core QEMU writes for ``dump-guest-memory`` (format "vmcore").

Reads PT_LOAD segments by guest-physical address, the per-CPU notes QEMU adds (``CORE``
NT_PRSTATUS and ``QEMU``, whose QEMUCPUState holds the segment caches, GDTR/IDTR and control
registers), translates virtual addresses with the guest's own page tables from CR3 (4- or
5-level), and decodes the IDT at the IDTR base into the snapshot object's ``"idt"`` list, and
the TSS at the TR base into its stack pointers, so the analysis knows which stack each vector
lands on.  The dump may be zstd-compressed (``vmcore.elf.zst``).

Parsed meta: ``guest_memory`` (path), ``cpu_state`` (per CPU: rip, rsp, cr2, cr3, cr4,
gs_base, kernel_gs_base, idt_base, idt_limit, gdt_base, tr_base, cpl), ``idt`` (gates of CPU
0's IDT), ``idt_cpu`` (which CPU's IDT that is), ``tss`` (per CPU: sp0, sp1, sp2, ist[7]) and
``snapshot`` (the snapshot object's cpus/idt, so analyses that read snapshots use the dump).
When the dump lacks QEMU's notes, IDTR and CR3 are taken from ``registers.txt`` (``info
registers``) or the last register dump of ``qemu.log`` beside it.
"""

from __future__ import annotations

import mmap
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from kmltrace.analysis.idt import decode_gates
from kmltrace.errors import InputError
from kmltrace.formats import Parsed
from kmltrace.formats.sniff import ELF_MAGIC, ZSTD_MAGIC
from kmltrace.output import hexstr

NAME = "vmcore"

ET_CORE = 4
PT_LOAD, PT_NOTE = 1, 4
PN_XNUM = 0xFFFF
NT_PRSTATUS = 1
#: how much of a compressed dump we agree to inflate into memory
MAX_INFLATED = 4 << 30
PAGE = 4096
_ADDRESS_MASK = 0x000F_FFFF_FFFF_F000   # physical address bits 51:12 of a paging entry


def _is_elf_core(head: bytes) -> bool:
    return (len(head) >= 18 and head[:4] == ELF_MAGIC and head[4] == 2 and head[5] == 1
            and struct.unpack_from("<H", head, 16)[0] == ET_CORE)


def sniff(head: bytes) -> bool:
    if head[:4] == ZSTD_MAGIC:
        try:
            import zstandard
            return _is_elf_core(zstandard.ZstdDecompressor().decompressobj().decompress(head))
        except Exception:  # not zstd after all, or not a core inside
            return False
    return _is_elf_core(head)


@dataclass
class Segment:
    paddr: int
    vaddr: int
    offset: int
    size: int


class GuestMemory:
    """A guest memory dump opened for reading by physical or virtual address."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.data = self._open()
        if not _is_elf_core(bytes(self.data[:64])):
            raise InputError("not an ELF64 little-endian core file", path=str(path), offset=0)
        self.segments: list[Segment] = []
        self.notes: list[tuple[str, int, bytes]] = []
        self._read_headers()

    def _open(self):
        with open(self.path, "rb") as f:
            if f.read(4) == ZSTD_MAGIC:
                import zstandard
                f.seek(0)
                reader = zstandard.ZstdDecompressor().stream_reader(f)
                data = reader.read(MAX_INFLATED + 1)
                if len(data) > MAX_INFLATED:
                    raise InputError("compressed dump inflates beyond 4 GiB: decompress it "
                                     "first", path=str(self.path))
                return data
            f.seek(0, 2)
            if f.tell() == 0:
                raise InputError("empty file", path=str(self.path))
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def _unpack(self, fmt: str, offset: int):
        size = struct.calcsize(fmt)
        if offset < 0 or offset + size > len(self.data):
            raise InputError("truncated ELF core (a header lies past the end of the file)",
                             path=str(self.path), offset=offset)
        return struct.unpack_from(fmt, self.data, offset)

    def _read_headers(self) -> None:
        phoff, shoff = self._unpack("<QQ", 32)
        phentsize, phnum = self._unpack("<HH", 54)
        if phnum == PN_XNUM and shoff:  # the real count is in section header 0's sh_info
            phnum = self._unpack("<I", shoff + 44)[0]
        for i in range(phnum):
            p_type, _flags, offset, vaddr, paddr, filesz = self._unpack(
                "<IIQQQQ", phoff + i * phentsize)
            if p_type == PT_LOAD and filesz:
                if offset + filesz > len(self.data):
                    raise InputError(f"truncated ELF core: segment at physical {paddr:#x} ends "
                                     f"past the end of the file", path=str(self.path),
                                     offset=offset)
                self.segments.append(Segment(paddr, vaddr, offset, filesz))
            elif p_type == PT_NOTE:
                self._read_notes(offset, filesz)
        self.segments.sort(key=lambda s: s.paddr)

    def _read_notes(self, offset: int, size: int) -> None:
        end = offset + size
        while offset + 12 <= end:
            namesz, descsz, kind = self._unpack("<III", offset)
            name_at = offset + 12
            desc_at = name_at + ((namesz + 3) & ~3)
            if desc_at + descsz > len(self.data):
                raise InputError("truncated ELF core note", path=str(self.path), offset=offset)
            name = bytes(self.data[name_at:name_at + namesz]).rstrip(b"\0").decode("ascii",
                                                                                     "replace")
            self.notes.append((name, kind, bytes(self.data[desc_at:desc_at + descsz])))
            offset = desc_at + ((descsz + 3) & ~3)

    # -- physical and virtual reads ------------------------------------------------------------
    def read_physical(self, address: int, size: int) -> bytes:
        """`size` bytes at guest-physical `address`; InputError where the dump has none."""
        out = bytearray()
        while size > 0:
            segment = next((s for s in self.segments
                            if s.paddr <= address < s.paddr + s.size), None)
            if segment is None:
                raise InputError(f"guest-physical address {address:#x} is not in the dump",
                                 path=str(self.path))
            start = segment.offset + (address - segment.paddr)
            take = min(size, segment.paddr + segment.size - address)
            out += self.data[start:start + take]
            address += take
            size -= take
        return bytes(out)

    def _entry(self, table: int, index: int) -> int:
        return struct.unpack("<Q", self.read_physical((table & _ADDRESS_MASK) + index * 8, 8))[0]

    def translate(self, vaddr: int, cr3: int, la57: bool = False) -> int | None:
        """The guest-physical address of `vaddr` under the page tables at `cr3` (None when
        not mapped).  4-level paging, or 5-level when CR4.LA57 was set."""
        shifts = (48, 39, 30, 21, 12) if la57 else (39, 30, 21, 12)
        table = cr3
        for level, shift in enumerate(shifts):
            try:
                entry = self._entry(table, (vaddr >> shift) & 0x1FF)
            except InputError:
                return None
            if not entry & 1:
                return None
            leaf_size_shift = shift if (shift in (30, 21) and entry & 0x80) else None
            if shift == 12:
                leaf_size_shift = 12
            if leaf_size_shift is not None:
                base = entry & _ADDRESS_MASK & ~((1 << leaf_size_shift) - 1)
                return base | (vaddr & ((1 << leaf_size_shift) - 1))
            table = entry
        return None

    def read_virtual(self, vaddr: int, size: int, cr3: int, la57: bool = False) -> bytes:
        out = bytearray()
        while size > 0:
            physical = self.translate(vaddr, cr3, la57)
            if physical is None:
                raise InputError(f"virtual address {vaddr:#x} is not mapped by the page tables "
                                 f"at CR3 {cr3:#x}", path=str(self.path))
            take = min(size, PAGE - (vaddr & (PAGE - 1)))
            out += self.read_physical(physical, take)
            vaddr += take
            size -= take
        return bytes(out)

    # -- CPU state -----------------------------------------------------------------------------
    def cpu_states(self) -> list[dict]:
        """Per CPU, from QEMU's ``QEMU`` notes (QEMUCPUState, target/i386/arch_dump.c)."""
        out = []
        for name, _kind, desc in self.notes:
            if name == "QEMU" and len(desc) >= 432:
                out.append(_qemu_cpu_state(desc, len(out)))
        return out


_REGISTERS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11",
              "r12", "r13", "r14", "r15", "rip", "rflags")
_SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss", "ldt", "tr", "gdt", "idt")


def _qemu_cpu_state(desc: bytes, cpu: int) -> dict:
    # struct QEMUCPUState: u32 version, size; u64 regs[18]; QEMUCPUSegment (u32 selector,
    # limit, flags, pad; u64 base) x 10; u64 cr[5]; u64 kernel_gs_base (newer QEMUs)
    regs = struct.unpack_from("<18Q", desc, 8)
    state: dict = {"cpu": cpu}
    state.update({name: value for name, value in zip(_REGISTERS, regs)})
    segments = {}
    for i, name in enumerate(_SEGMENTS):
        selector, limit, flags, _pad, base = struct.unpack_from("<IIIIQ", desc, 152 + 24 * i)
        segments[name] = (selector, limit, flags, base)
    cr = struct.unpack_from("<5Q", desc, 392)
    state.update({"cs": segments["cs"][0], "ss": segments["ss"][0],
                  "fs_base": segments["fs"][3], "gs_base": segments["gs"][3],
                  "gdt_base": segments["gdt"][3], "idt_base": segments["idt"][3],
                  "idt_limit": segments["idt"][1], "tr_base": segments["tr"][3],
                  "cr0": cr[0], "cr2": cr[2], "cr3": cr[3], "cr4": cr[4],
                  "cpl": segments["cs"][0] & 3})
    if len(desc) >= 440:
        state["kernel_gs_base"] = struct.unpack_from("<Q", desc, 432)[0]
    return state


_IDT_LINE = re.compile(rb"^IDT=\s*([0-9a-fA-F]+)\s+([0-9a-fA-F]+)", re.M)
_CR3_LINE = re.compile(rb"CR3=([0-9a-fA-F]+)")
_CR4_LINE = re.compile(rb"CR4=([0-9a-fA-F]+)")
_TR_LINE = re.compile(rb"^TR\s*=[0-9a-fA-F]+\s+([0-9a-fA-F]+)", re.M)


def registers_beside(path: Path) -> dict | None:
    """IDTR, CR3, CR4 and TR base from ``registers.txt`` or the tail of ``qemu.log`` next to
    the dump (the last register dump in either), or None."""
    for name, tail in (("registers.txt", None), ("qemu.log", 1 << 20)):
        candidate = path.parent / name
        try:
            with open(candidate, "rb") as f:
                if tail:
                    f.seek(0, 2)
                    f.seek(max(0, f.tell() - tail))
                text = f.read()
        except OSError:
            continue
        idts = list(_IDT_LINE.finditer(text))
        cr3s = list(_CR3_LINE.finditer(text))
        if not idts or not cr3s:
            continue
        state = {"idt_base": int(idts[-1].group(1), 16), "idt_limit": int(idts[-1].group(2), 16),
                 "cr3": int(cr3s[-1].group(1), 16), "source": name}
        cr4s = list(_CR4_LINE.finditer(text))
        state["cr4"] = int(cr4s[-1].group(1), 16) if cr4s else 0
        trs = list(_TR_LINE.finditer(text))
        if trs:
            state["tr_base"] = int(trs[-1].group(1), 16)
        return state
    return None


def _tss(memory: GuestMemory, state: dict) -> dict | None:
    """RSP0-2 and IST1-7 of the 64-bit TSS at the TR base."""
    if not state.get("tr_base"):
        return None
    la57 = bool(state.get("cr4", 0) & (1 << 12))
    raw = memory.read_virtual(state["tr_base"], 104, state["cr3"], la57)
    sp = struct.unpack_from("<3Q", raw, 4)
    ist = struct.unpack_from("<7Q", raw, 36)
    return {"cpu": state.get("cpu", 0), "sp0": hexstr(sp[0]), "sp1": hexstr(sp[1]),
            "sp2": hexstr(sp[2]), "ist": [hexstr(v) for v in ist]}


def _json_state(state: dict) -> dict:
    return {k: (v if k in ("cpu", "cpl", "source") else hexstr(v)) for k, v in state.items()}


def parse(path: Path) -> Parsed:
    memory = GuestMemory(path)
    parsed = Parsed(path=str(path), format=NAME, meta={"guest_memory": str(path)})
    states = memory.cpu_states()
    if states:
        parsed.meta["cpu_state"] = [_json_state(s) for s in states]
    else:
        beside = registers_beside(path)
        states = [beside] if beside else []
        if beside:
            parsed.meta["cpu_state"] = [_json_state(beside)]
    if not states:
        parsed.errors.append(InputError("no CPU state in the dump and no registers.txt or "
                                        "qemu.log beside it: the IDT cannot be located",
                                        path=str(path)))
        return parsed
    state = states[0]
    la57 = bool(state.get("cr4", 0) & (1 << 12))
    size = min(state.get("idt_limit", 0xFFF) + 1, 256 * 16)
    try:
        parsed.meta["idt"] = decode_gates(memory.read_virtual(state["idt_base"], size,
                                                              state["cr3"], la57))
        parsed.meta["idt_cpu"] = state.get("cpu", 0)
    except InputError as e:
        parsed.errors.append(e)
    tss = []
    for s in states:
        try:
            entry = _tss(memory, s)
        except InputError as e:
            parsed.errors.append(e)
            continue
        if entry:
            tss.append(entry)
    if tss:
        parsed.meta["tss"] = tss
    parsed.meta["snapshot"] = _snapshot(parsed.meta, len(states))
    return parsed


def _snapshot(meta: dict, cpus: int) -> dict:
    """The part of CONTRACT.md's snapshot object a raw memory dump gives without symbols:
    the CPUs' TSS stack pointers and the IDT (tasks need a kernel's debug info: drgn)."""
    return {"kernel": {"cpus": cpus}, "source": "guest memory dump",
            "cpus": [{"cpu": t["cpu"], "tss": {k: t[k] for k in ("sp0", "sp1", "sp2", "ist")}}
                     for t in meta.get("tss", [])],
            "idt": meta.get("idt", []), "tasks": [], "incidents": []}
