"""DWARF line info (address -> file:line) of an ELF that has ``.debug_line``, via pyelftools.

Decoding line programs in Python is slow for a vmlinux (hundreds of MB of DWARF), so the
table is cached like the symbol tables, and ELFs whose ``.debug_line`` exceeds
``MAX_DEBUG_LINE`` are refused with a message (addr2line is the tool for those).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from kmltrace.errors import InputError, KmltraceError
from kmltrace.symbols import cache
from kmltrace.symbols.readers import build_id, open_elf
from kmltrace.symbols.table import SymbolTable

MAX_DEBUG_LINE = 32 * 1024 * 1024


def read_lines(path: str | Path) -> SymbolTable:
    """A table whose "names" are ``file:line`` and whose entries cover each line-table row
    up to the next row (ends of sequences close the range)."""
    path = Path(path)
    f, elf = open_elf(path)
    with f:
        try:
            section = elf.get_section_by_name(".debug_line")
            if section is None or not elf.has_dwarf_info():
                return SymbolTable.build([], [], source=str(path), meta={"kind": "lines"})
            if section["sh_size"] > MAX_DEBUG_LINE:
                raise InputError(f".debug_line is {section['sh_size'] >> 20} MiB: too big to "
                                 "decode here; use addr2line", path=str(path))
            addrs, sizes, names = [], [], []
            dwarf = elf.get_dwarf_info()
            for cu in dwarf.iter_CUs():
                program = dwarf.line_program_for_CU(cu)
                if program is None:
                    continue
                files = _file_names(program)
                prev = None
                for entry in program.get_entries():
                    state = entry.state
                    if state is None:
                        continue
                    if prev is not None and state.address > prev[0]:
                        addrs.append(prev[0])
                        sizes.append(state.address - prev[0])
                        names.append(prev[1])
                    prev = None if state.end_sequence else (
                        state.address, f"{files.get(state.file, '?')}:{state.line}")
        except KmltraceError:
            raise
        except Exception as e:   # damaged DWARF: the symbols still work
            raise InputError(f"damaged DWARF line info: {type(e).__name__}: {e}",
                             path=str(path)) from None
    # the last row at one address wins, as in addr2line
    order = np.arange(len(addrs))[::-1]
    return SymbolTable.build(np.asarray(addrs, dtype=np.uint64)[order], [names[i] for i in order],
                             sizes=np.asarray(sizes, dtype=np.uint64)[order], source=str(path),
                             meta={"kind": "lines"})


def _file_names(program) -> dict[int, str]:
    header = program.header
    version = header["version"]
    base = 0 if version >= 5 else 1        # DWARF 5 numbers files from 0
    out = {}
    dirs = [d.decode("utf-8", "replace") if isinstance(d, bytes) else str(d)
            for d in header["include_directory"]]
    for i, entry in enumerate(header["file_entry"]):
        name = entry.name.decode("utf-8", "replace") if isinstance(entry.name, bytes) else str(entry.name)
        d = entry.dir_index
        if not name.startswith("/") and 0 <= d - (0 if version >= 5 else 1) < len(dirs):
            name = f"{dirs[d - (0 if version >= 5 else 1)]}/{name}"
        out[i + base] = name
    return out


def load_lines(path: str | Path) -> SymbolTable:
    """:func:`read_lines` through the cache (keyed by build-id, or path+size+mtime)."""
    path = Path(path)
    f, elf = open_elf(path)
    with f:
        bid = build_id(elf)
    return cache.cached(path, "lines", read_lines, bid)


def line_of(table: SymbolTable, addresses, bias: int = 0) -> pl.Series:
    """``file:line`` per address (null where the line table has none)."""
    return table.lookup(addresses, bias)["symbol"].alias("line")
