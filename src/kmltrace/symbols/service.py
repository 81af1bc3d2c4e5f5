"""The symbol service of a capture: kernel addresses and user addresses to names.

Kernel: a vmlinux (``--vmlinux``, a bundle's ``vmlinux`` key, an ELF TARGET) or System.map,
with the KASLR slide from a kallsyms snapshot (``_text`` there minus ``_text`` in the ELF) or a
console ``Kernel Offset:`` line; else the kallsyms snapshot itself (a bundle's ``kallsyms``, a
trace.dat kallsyms section), whose addresses are already the running ones.
User: each process's mapped ELFs from its captured ``/proc/PID/maps`` (bundles'
processes.json), with the load bias = where the file's first page is mapped minus the ELF's own
lowest load address. A mapped file missing on this machine is looked up among the ELF
TARGETs by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import polars as pl

from kmltrace.errors import KmltraceError
from kmltrace.symbols import cache, readers
from kmltrace.symbols.table import SymbolTable, hex_column

USER_TOP = 0x0000_8000_0000_0000


def is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def load_table(path: str | Path) -> SymbolTable:
    """An ELF's or a kallsyms/System.map text's table, through the cache."""
    path = Path(path)
    if is_elf(path):
        f, elf = readers.open_elf(path)
        with f:
            bid = readers.build_id(elf)
        return cache.cached(path, "elf", readers.read_elf, bid)
    return cache.cached(path, "kallsyms", readers.read_kallsyms)


@lru_cache(maxsize=64)
def _table_or_none(path: str) -> SymbolTable | None:
    try:
        return load_table(path)
    except (KmltraceError, OSError):
        return None


@dataclass
class Mapping:
    start: int
    end: int
    table: SymbolTable
    bias: int


@dataclass
class Symbolizer:
    kernel: SymbolTable | None = None
    kernel_slide: int = 0                                   # subtracted from kernel addresses
    kernel_running: bool = False      # the table is a kallsyms snapshot: no slide ever applies
    mappings: dict[int, list[Mapping]] = field(default_factory=dict)   # pid -> mapped ELFs
    errors: list[KmltraceError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)          # how the tables were chosen

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def for_capture(cls, capture, kaslr_offset: int | None = None) -> Symbolizer:
        """The tables a capture names (see the module doc). `kaslr_offset` is a console
        ``Kernel Offset:`` value, used when no kallsyms snapshot gives the slide."""
        out = cls()
        if kaslr_offset is None:
            offsets = [o for o in _metas(capture, "kaslr_offset") if o]
            kaslr_offset = offsets[-1] if offsets else None
        vmlinux = getattr(capture, "vmlinux", None)
        elves = [str(p) for p in _metas(capture, "elf") if p]
        kernels = [vmlinux] if vmlinux else []
        kernels += [p for p in elves if _looks_like_kernel(p)]
        snapshots = _kallsyms_sources(capture)
        kallsyms = None
        for source in snapshots:
            try:
                kallsyms = (readers.read_kallsyms_text(source[1], source[0]) if source[1] is not None
                            else load_table(source[0]))
                break
            except KmltraceError as e:
                out.errors.append(e)
        for path in kernels:
            try:
                out.kernel = load_table(path)
                break
            except KmltraceError as e:
                out.errors.append(e)
        if out.kernel is not None:
            out.notes.append(f"kernel symbols from {out.kernel.source}")
            if kallsyms is not None:
                out.kernel_slide = _slide(out.kernel, kallsyms)
                out.notes.append(f"KASLR slide {out.kernel_slide:#x} from {kallsyms.source}")
            elif kaslr_offset:
                out.kernel_slide = int(kaslr_offset)
                out.notes.append(f"KASLR slide {out.kernel_slide:#x} from the console")
        elif kallsyms is not None:
            out.kernel, out.kernel_running = kallsyms, True
            out.notes.append(f"kernel symbols from {kallsyms.source}")
        out.add_processes(getattr(capture, "processes", []) or [], elves)
        return out

    def add_processes(self, processes: list[dict], local_elves: list[str] = ()) -> None:
        """Map each process's ELFs (processes.json rows) with their load bias."""
        by_name = {Path(p).name: str(p) for p in local_elves}
        for proc in processes:
            maps = proc.get("maps") or []
            firsts: dict[str, tuple[int, int]] = {}
            for m in maps:
                path = m.get("path") or ""
                if not path.startswith("/"):
                    continue
                try:
                    start, end = int(str(m["start"]), 16), int(str(m["end"]), 16)
                except (KeyError, ValueError):
                    continue
                lo, hi = firsts.get(path, (start, end))
                firsts[path] = (min(lo, start), max(hi, end))
            mapped = []
            for path, (start, end) in firsts.items():
                local = path if Path(path).is_file() else by_name.get(Path(path).name)
                table = _table_or_none(local) if local else None
                if table is None or table.meta.get("kind") != "elf":
                    continue
                mapped.append(Mapping(start, end, table, start - int(table.meta.get("load_base", 0))))
            for key in {proc.get("pid"), proc.get("tgid")} - {None}:
                self.mappings.setdefault(int(key), []).extend(mapped)

    # -- lookups ---------------------------------------------------------------------------------

    def kernel_lookup(self, addresses, slide: int | None = None) -> pl.DataFrame:
        """:meth:`SymbolTable.lookup` of kernel addresses (null columns without a table)."""
        table = self.kernel or SymbolTable.build([], [])
        return table.lookup(addresses, self._slide(slide))

    def _slide(self, slide: int | None) -> int:
        """A caller's slide (a console boot's KASLR offset) applies to link-address tables only."""
        if self.kernel_running:
            return 0
        return self.kernel_slide if slide is None else slide

    def kernel_symbol(self, address: int | None, slide: int | None = None) -> str | None:
        if self.kernel is None or address is None:
            return None
        return self.kernel.symbolize(address, self._slide(slide))

    def user_symbol(self, pid: int | None, address: int | None) -> str | None:
        if pid is None or address is None:
            return None
        for m in self.mappings.get(int(pid), []):
            if m.start <= address < m.end:
                text = m.table.symbolize(address, m.bias)
                return text or f"[{Path(m.table.source).name}+{address - m.bias:#x}]"
        return None

    def kernel_line(self, address: int | None, slide: int | None = None) -> str | None:
        """``file:line`` of a kernel address when the kernel table is an ELF with DWARF lines
        (a vmlinux built with CONFIG_DEBUG_INFO; refused above lines.MAX_DEBUG_LINE)."""
        from kmltrace.symbols.lines import load_lines
        if self.kernel is None or address is None or self.kernel.meta.get("kind") != "elf":
            return None
        try:
            return load_lines(self.kernel.source).lookup([address], self._slide(slide))["symbol"][0]
        except KmltraceError:
            return None

    def user_line(self, pid: int | None, address: int | None) -> str | None:
        """``file:line`` of a user address from its ELF's DWARF line table (None without)."""
        from kmltrace.symbols.lines import load_lines
        if pid is None or address is None:
            return None
        for m in self.mappings.get(int(pid), []):
            if m.start <= address < m.end:
                try:
                    return load_lines(m.table.source).lookup([address], m.bias)["symbol"][0]
                except KmltraceError:
                    return None
        return None

    def symbolize(self, address: int | None, pid: int | None = None) -> str | None:
        """One address: the kernel table for kernel-half addresses, the process's ELFs else."""
        if address is None:
            return None
        if address >= USER_TOP:
            return self.kernel_symbol(address)
        return self.user_symbol(pid, address) or self.kernel_symbol(address)

    def symbolize_column(self, addresses, pids=None) -> pl.Series:
        """``sym_text`` for whole columns: kernel addresses against the kernel table, user
        addresses against each pid's mapped ELFs (vectorised per process and file)."""
        q = np.asarray(pl.Series(addresses, dtype=pl.UInt64).fill_null(0).to_numpy(), dtype=np.uint64)
        out = self.kernel_lookup(q)["sym_text"]
        if pids is None or not self.mappings:
            return out.alias("symbol")
        # which mapping holds each user address: one as-of join by pid over all mappings
        # (a system-wide capture has hundreds of processes), then one lookup per mapping
        maps = [(pid, m) for pid, ms in self.mappings.items() for m in ms]
        spans = pl.DataFrame({"pid": [p for p, _ in maps], "start": [m.start for _, m in maps],
                              "end": [m.end for _, m in maps], "mapping": range(len(maps))},
                             schema={"pid": pl.Int64, "start": pl.UInt64, "end": pl.UInt64,
                                     "mapping": pl.Int64}).sort("start")
        rows = (pl.DataFrame({"row": np.arange(len(q)), "pid": pl.Series(pids, dtype=pl.Int64),
                              "addr": q})
                .filter(pl.col("addr") < USER_TOP, pl.col("pid").is_not_null()).sort("addr")
                .join_asof(spans, left_on="addr", right_on="start", by="pid", strategy="backward",
                           check_sortedness=False)      # both sorted by address just above
                .filter(pl.col("addr") < pl.col("end")))
        for (mapping,), part in rows.group_by("mapping"):
            m = maps[mapping][1]
            sel = part["row"].to_numpy()
            addrs = part["addr"].to_numpy()
            # no symbol covers it (a stripped library's internals): file+offset, like perf
            text = m.table.lookup(addrs, m.bias)["sym_text"].fill_null(
                pl.concat_str([pl.lit(f"[{Path(m.table.source).name}+"),
                               hex_column(addrs - np.uint64(m.bias)), pl.lit("]")]))
            out = out.scatter(sel, text)
        return out.alias("symbol")


def _looks_like_kernel(path: str) -> bool:
    """An ELF TARGET holds kernel symbols when it is a fixed-address executable with no
    program interpreter (a vmlinux, the lab's kernel.elf); a program is mapped by its maps."""
    table = _table_or_none(path)
    return bool(table is not None and table.meta.get("elf_type") == "ET_EXEC"
                and not table.meta.get("interp"))


def _slide(vmlinux: SymbolTable, kallsyms: SymbolTable) -> int:
    """Running address minus link address: ``_text`` in both, else the most common difference
    over the names both tables share (a kernel without ``_text``, like the lab's)."""
    for name in ("_text", "_stext", "startup_64"):
        a, b = kallsyms.address_of(name), vmlinux.address_of(name)
        if a is not None and b is not None:
            return a - b
    both = (pl.DataFrame({"name": kallsyms.names, "run": kallsyms.addrs.astype(np.int64)})
            .join(pl.DataFrame({"name": vmlinux.names, "link": vmlinux.addrs.astype(np.int64)}),
                  on="name"))
    if not both.height:
        return 0
    return int((both["run"] - both["link"]).mode().sort()[0])


def _metas(capture, key: str) -> list:
    try:
        return list(capture.metas(key))
    except AttributeError:
        return []


def _kallsyms_sources(capture) -> list[tuple[str, str | None]]:
    """(source, text or None to read the file) of every kallsyms snapshot in the capture."""
    out = []
    for b in getattr(capture, "bundles", []) or []:
        path = Path(b.get("path", "")) / "kallsyms"
        if path.is_file():
            out.append((str(path), None))
    out += [(str(p), None) for p in _metas(capture, "kallsyms") if isinstance(p, (str, Path))]
    for parsed in getattr(capture, "inputs", []) or []:
        text = parsed.meta.get("kallsyms_text") if hasattr(parsed, "meta") else None
        if text:
            out.append((f"{parsed.path} (kallsyms section)", text))
    return out
