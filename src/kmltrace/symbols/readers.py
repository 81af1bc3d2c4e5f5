"""Symbol tables from their sources: an ELF (vmlinux or a program), System.map, kallsyms text.

The ELF symbol table is read as one numpy record array (pyelftools only finds the sections),
so a 150,000-symbol vmlinux loads in a fraction of a second even before the cache.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import polars as pl

from kmltrace.errors import InputError
from kmltrace.symbols.table import SymbolTable

_SYM64 = np.dtype([("name", "<u4"), ("info", "u1"), ("other", "u1"), ("shndx", "<u2"),
                   ("value", "<u8"), ("size", "<u8")])
_SYM32 = np.dtype([("name", "<u4"), ("value", "<u4"), ("size", "<u4"), ("info", "u1"),
                   ("other", "u1"), ("shndx", "<u2")])
STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_SECTION, STT_FILE = 0, 1, 2, 3, 4
STB_LOCAL, STB_GLOBAL, STB_WEAK = 0, 1, 2
# kallsyms/System.map letters that are not addresses of code or data
KERNEL_HALF = 0xFFFF_8000_0000_0000
MODULE_EDGE_MAX = 0x1000
_SKIP_TYPES = {"U", "u", "w", "v", "N", "n"}


# -- ELF ---------------------------------------------------------------------------------------

def open_elf(path: Path):
    """(file, ELFFile) or InputError in one line (not an ELF, truncated, corrupt header)."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
    try:
        f = open(path, "rb")
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror or e}", path=str(path)) from None
    try:
        return f, ELFFile(f)
    except (ELFError, ValueError, EOFError, OSError, Exception) as e:  # pyelftools raises many kinds
        f.close()
        raise InputError(f"not a readable ELF: {type(e).__name__}: {e}", path=str(path),
                         offset=0) from None


def build_id(elf) -> str | None:
    """The GNU build-id note as hex, or None."""
    try:
        for section in elf.iter_sections():
            if section["sh_type"] != "SHT_NOTE":
                continue
            for note in section.iter_notes():
                # a vmlinux also has Xen notes whose type numbers collide: the owner says
                if note["n_name"] == "GNU" and note["n_type"] == "NT_GNU_BUILD_ID":
                    desc = note["n_desc"]
                    return desc.hex() if isinstance(desc, bytes) else str(desc)
    except Exception:          # a damaged note only costs the cache key
        return None
    return None


def load_bias_base(elf) -> int:
    """The lowest PT_LOAD virtual address rounded down to a page: where offset 0 of the
    file is mapped before relocation (0 for a PIE or shared object)."""
    loads = [(s["p_offset"], s["p_vaddr"]) for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
    if not loads:
        return 0
    offset, vaddr = min(loads)          # the segment holding the lowest file offset
    return max(vaddr - offset, 0) & ~0xFFF


def _section_bytes(f, elf, section, path: Path) -> bytes:
    size, offset = section["sh_size"], section["sh_offset"]
    f.seek(0, io.SEEK_END)
    if offset + size > f.tell():
        raise InputError(f"section {section.name or '?'} runs past the end of the file "
                         f"({offset:#x}+{size:#x})", path=str(path), offset=offset)
    f.seek(offset)
    return f.read(size)


def read_elf(path: str | Path) -> SymbolTable:
    """The symbols of an ELF's ``.symtab`` (``.dynsym`` when stripped): functions first,
    then objects, then labels; globals before weak before locals at one address."""
    path = Path(path)
    try:
        return _read_elf(path)
    except InputError:
        raise
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as e:    # pyelftools' many errors on damaged headers: one line
        raise InputError(f"damaged ELF: {type(e).__name__}: {e}", path=str(path)) from None


def _raw_symbols(path: Path):
    """(Elf_Sym records, string table bytes, meta) of the ELF's symtab (dynsym if stripped)."""
    f, elf = open_elf(path)
    with f:
        symtabs = [s for s in elf.iter_sections() if s["sh_type"] in ("SHT_SYMTAB", "SHT_DYNSYM")]
        symtabs.sort(key=lambda s: s["sh_type"] != "SHT_SYMTAB")
        meta = {"kind": "elf", "build_id": build_id(elf), "elf_type": elf["e_type"],
                "symbols_from": symtabs[0]["sh_type"] if symtabs else None,
                "load_base": load_bias_base(elf),
                "interp": any(s["p_type"] == "PT_INTERP" for s in elf.iter_segments())}
        dtype = _SYM64 if elf.elfclass == 64 else _SYM32
        if not symtabs:
            return np.zeros(0, dtype=dtype), b"", meta
        section = symtabs[0]
        data = _section_bytes(f, elf, section, path)
        strings = _section_bytes(f, elf, elf.get_section(section["sh_link"]), path)
    return np.frombuffer(data, dtype=dtype, count=len(data) // dtype.itemsize), strings, meta


def object_ranges(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (starts, ends) of the ELF's data objects (STT_OBJECT with a size): bytes that a
    linear sweep would misread as code when they sit in an executable section."""
    try:
        syms, _, _ = _raw_symbols(Path(path))
    except InputError:
        raise
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as e:
        raise InputError(f"damaged ELF: {type(e).__name__}: {e}", path=str(path)) from None
    objs = syms[((syms["info"] & 0xF) == STT_OBJECT) & (syms["size"] > 0) & (syms["shndx"] != 0)]
    order = np.argsort(objs["value"], kind="stable")
    starts = objs["value"][order].astype(np.uint64)
    return starts, starts + objs["size"][order].astype(np.uint64)


def _read_elf(path: Path) -> SymbolTable:
    syms, strings, meta = _raw_symbols(path)
    kind, bind = syms["info"] & 0xF, syms["info"] >> 4
    keep = ((syms["shndx"] != 0) & (syms["value"] != 0) & (syms["name"] != 0)
            & ((kind == STT_FUNC) | (kind == STT_OBJECT) | (kind == STT_NOTYPE)))
    syms, kind, bind = syms[keep], kind[keep], bind[keep]
    names = _names(strings, syms["name"])
    kind_rank = np.select([kind == STT_FUNC, kind == STT_OBJECT], [0, 1], 2)
    bind_rank = np.select([bind == STB_GLOBAL, bind == STB_WEAK], [0, 1], 2)
    return SymbolTable.build(syms["value"], names, sizes=syms["size"], rank=kind_rank * 3 + bind_rank,
                             source=str(path), meta=meta)


def _names(strings: bytes, offsets: np.ndarray) -> list[str]:
    """NUL-terminated names at `offsets` of a string table (out-of-range offsets: "?")."""
    buf = np.frombuffer(strings, dtype=np.uint8)
    nul = np.flatnonzero(buf == 0)
    offsets = offsets.astype(np.int64)
    valid = offsets < len(buf)
    pos = np.searchsorted(nul, np.where(valid, offsets, 0))
    ends = np.where(pos < len(nul), nul[np.minimum(pos, len(nul) - 1)], len(buf))
    return [strings[s:e].decode("utf-8", "backslashreplace") if ok else "?"
            for s, e, ok in zip(offsets.tolist(), ends.tolist(), valid.tolist())]


# -- kallsyms / System.map ----------------------------------------------------------------------

def read_kallsyms_text(text: str | bytes, source: str = "kallsyms") -> SymbolTable:
    """A ``/proc/kallsyms`` snapshot or a ``System.map``: ``ADDR TYPE NAME [\\t[module]]``.
    Sizes are the distance to the next symbol, as the kernel computes them."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "backslashreplace")
    lines = pl.Series("line", text.splitlines(), dtype=pl.String)
    parts = (lines.str.strip_chars_end().str.splitn(" ", 3).struct.rename_fields(["a", "t", "rest"])
             .struct.unnest())
    rest = parts["rest"].fill_null("")
    frame = pl.DataFrame({
        "addr": parts["a"].str.to_integer(base=16, dtype=pl.UInt64, strict=False),
        "type": parts["t"],
        "name": rest.str.split("\t").list.first(),
        "module": rest.str.extract(r"\t\[([^\]]*)\]", 1).fill_null(""),
    }).with_row_index("line", offset=1)
    bad = frame.filter(pl.col("addr").is_null() | pl.col("type").is_null()
                       | (pl.col("name").fill_null("") == ""))
    bad = bad.filter(pl.col("line") <= lines.len())
    good = frame.filter(pl.col("addr").is_not_null() & pl.col("type").str.contains("^[A-Za-z]$")
                        & ~pl.col("type").is_in(list(_SKIP_TYPES))
                        & (pl.col("name").fill_null("") != ""))
    if len(lines) and bad.height == len(lines):
        raise InputError("not a kallsyms or System.map text (no 'ADDR TYPE NAME' line)",
                         path=source, line=1)
    if good.height and (good["addr"] == 0).all():
        raise InputError("kallsyms addresses are hidden (all zero: kptr_restrict; "
                         "snapshot it as root)", path=source, line=1)
    # absolute and per-CPU symbols (small addresses) are not where code runs, and the
    # last of them would otherwise stretch up to the kernel's text
    good = good.filter(pl.col("addr") != 0)
    if (good["addr"] >= KERNEL_HALF).any():
        good = good.filter(pl.col("addr") >= KERNEL_HALF)
    table = SymbolTable.build(good["addr"].to_numpy(), good["name"], modules=good["module"],
                              source=source, meta={"kind": "kallsyms",
                                                   "bad_lines": bad["line"].head(5).to_list()})
    if table.modules is not None and len(table) > 1:
        # the last symbol of the kernel or of a module would stretch over the gap to the next
        # module (the kernel itself stops at the module's end): at most a page
        mods = table.modules.to_numpy()
        edge = np.flatnonzero(mods[:-1] != mods[1:])
        table.sizes[edge] = np.minimum(table.sizes[edge], MODULE_EDGE_MAX)
    return table


def read_kallsyms(path: str | Path) -> SymbolTable:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror or e}", path=str(path)) from None
    return read_kallsyms_text(data, source=str(path))
