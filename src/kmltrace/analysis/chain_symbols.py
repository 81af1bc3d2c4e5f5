"""Symbols for the addresses of a chain: a minimal ELF symbol lookup (pyelftools), the
KASLR slide a console printed, and the IDT gates a capture carries. A stand-in for a shared
symbol service: swap :func:`symbolizer` for it when there is one."""

from __future__ import annotations

from bisect import bisect_right
from functools import lru_cache
from pathlib import Path

import polars as pl

PAGE = 4096


def kaslr_offsets(events: pl.LazyFrame, names: set[str]) -> dict:
    """(console file, boot_index) -> the KASLR slide that boot printed; "last" -> the last one
    seen (for evidence without a boot of its own, such as a QEMU log of the same run)."""
    if "kaslr_offset" not in names:
        return {}
    boot = pl.col("boot_index") if "boot_index" in names else pl.lit(None, dtype=pl.Int32)
    rows = (events.filter(pl.col("kaslr_offset").is_not_null())
            .select("file", boot.alias("boot_index"), "kaslr_offset").collect())
    out: dict = {(r["file"], r["boot_index"]): int(r["kaslr_offset"]) for r in rows.to_dicts()}
    if rows.height:
        out["last"] = int(rows["kaslr_offset"][-1])
    return out


def symbolizer(capture, offset: int):
    """ip -> ``func+0xoff`` from the ELF the capture names (``--vmlinux`` or an ELF TARGET),
    undoing the KASLR slide the console printed. A small stand-in for a shared symbol
    service: swap :func:`_symbol_table` for it when there is one."""
    paths = [p for p in [getattr(capture, "vmlinux", None), *_metas(capture, "elf"),
                         *_bundle_elves(capture)] if p]
    tables = [t for t in (_symbol_table(str(p)) for p in paths) if t]

    def lookup(ip, slide=None):
        if ip is None:
            return None
        offset_now = offset if slide is None else slide
        for addrs, entries in tables:
            for candidate in ((ip - offset_now) & 0xFFFFFFFFFFFFFFFF, ip) if offset_now else (ip,):
                i = bisect_right(addrs, candidate) - 1
                if i < 0:
                    continue
                start, size, name = entries[i]
                if candidate < start + max(size, 1) or (size == 0 and candidate - start < PAGE):
                    delta = candidate - start
                    return f"{name}+{delta:#x}" if delta else name
        return None
    return lookup


def _bundle_elves(capture) -> list[str]:
    """Executable ELF files a bundle carries (a lab bundle's kernel.elf): symbols for RIP."""
    out = []
    for manifest in getattr(capture, "bundles", None) or []:
        base = Path(manifest.get("path") or ".")
        for entry in manifest.get("files") or []:
            path = base / str(entry.get("path", ""))
            try:
                with open(path, "rb") as f:
                    head = f.read(18)
            except OSError:
                continue
            if head[:4] == b"\x7fELF" and len(head) == 18 and head[16] in (2, 3):
                out.append(str(path))
    return out


def _metas(capture, key: str) -> list:
    try:
        return list(capture.metas(key))
    except AttributeError:
        return []


@lru_cache(maxsize=8)
def _symbol_table(path: str):
    """Sorted (addresses, [(start, size, name)]) of an ELF's function and label symbols."""
    try:
        from elftools.elf.elffile import ELFFile
        from elftools.elf.sections import SymbolTableSection
        with open(path, "rb") as f:
            elf = ELFFile(f)
            entries = []
            for section in elf.iter_sections():
                if not isinstance(section, SymbolTableSection):
                    continue
                for sym in section.iter_symbols():
                    kind = sym["st_info"]["type"]
                    if kind not in ("STT_FUNC", "STT_NOTYPE") or not sym.name or \
                            sym["st_shndx"] == "SHN_UNDEF" or sym["st_value"] == 0:
                        continue
                    entries.append((sym["st_value"], sym["st_size"], sym.name))
    except Exception:    # not an ELF or unreadable: no symbols, the addresses still show
        return None
    entries.sort()
    return [e[0] for e in entries], entries


def idt_gates(capture) -> dict[int, int]:
    """vector -> IST from the IDT in the capture: an ``idt`` meta (gates decoded from a
    memory dump) or a snapshot's ``idt``. Empty when the capture has none."""
    for gates in _metas(capture, "idt"):
        if gates:
            return {int(g["vector"]): int(g.get("ist") or 0) for g in gates if g.get("present", True)}
    for snap in _metas(capture, "snapshot"):
        gates = snap.get("idt") if isinstance(snap, dict) else None
        if gates:
            return {int(g["vector"]): int(g.get("ist") or 0) for g in gates if g.get("present", True)}
    return {}
