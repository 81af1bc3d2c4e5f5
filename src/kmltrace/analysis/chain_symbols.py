"""Symbols for the addresses of a chain (the shared symbol service, kmltrace.symbols), the
KASLR slide each console boot printed, and the IDT gates a capture carries."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from kmltrace.errors import KmltraceError
from kmltrace.symbols import Symbolizer
from kmltrace.symbols.service import load_table


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
    """ip -> ``func+0xoff`` (:func:`short_symbol`) through the shared symbol service (``--vmlinux``, an ELF
    TARGET, kallsyms), or a bundle's own kernel ELF (a lab bundle's kernel.elf); `offset` is
    the KASLR slide a console printed, used when the service finds no better one. A chain's
    addresses are kernel code (CPL 0), whatever half they are in."""
    service = Symbolizer.for_capture(capture, kaslr_offset=offset or None)
    if service.kernel is None:
        for path in _bundle_elves(capture):
            try:
                service.kernel = load_table(path)
                break
            except (KmltraceError, OSError):
                continue

    def lookup(ip, slide=None):
        if ip is None or service.kernel is None:
            return None
        return short_symbol(service.kernel_symbol(int(ip), slide))
    return lookup


def short_symbol(symbol: str | None) -> str | None:
    """``func+0x9/0x50 [mod]`` -> ``func+0x9 [mod]``, ``func+0x0/0x17`` -> ``func``: a chain
    names the instruction, the function's size is noise there."""
    if not symbol:
        return None
    head, _, module = symbol.partition(" ")
    name, _, offset = head.split("/")[0].partition("+")
    if offset and int(offset, 16) != 0:
        name = f"{name}+{offset}"
    return name + (f" {module}" if module else "")


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
