"""A sorted symbol table and its vectorised lookup: address -> ``symbol+0xoff/0xsize``.

Lookups run over whole columns with ``numpy.searchsorted`` (no per-address Python), and the
text the kernel prints (``%pS``: ``name+0xoff/0xsize [module]``) is assembled by polars from
per-symbol strings and a table of small hexadecimal offsets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

#: offsets below this are formatted from a precomputed table; larger ones (rare) one by one
_HEX_TABLE_SIZE = 1 << 16
_hex_table: pl.Series | None = None


def _small_hex() -> pl.Series:
    global _hex_table
    if _hex_table is None:
        _hex_table = pl.Series([f"{i:#x}" for i in range(_HEX_TABLE_SIZE)], dtype=pl.String)
    return _hex_table


def hex_column(values: np.ndarray) -> pl.Series:
    """``0x..`` strings of unsigned integers, vectorised for the usual small ones."""
    values = np.asarray(values, dtype=np.uint64)
    small = values < _HEX_TABLE_SIZE
    out = _small_hex().gather(np.where(small, values, 0).astype(np.int64))
    if not small.all():
        big = np.flatnonzero(~small)
        uniq, inverse = np.unique(values[big], return_inverse=True)
        text = pl.Series([f"{int(v):#x}" for v in uniq], dtype=pl.String).gather(inverse)
        out = out.scatter(big, text)
    return out


@dataclass
class SymbolTable:
    """Symbols sorted by address. ``sizes`` are the ELF sizes, or for kallsyms and System.map
    the distance to the next symbol (what the kernel prints). ``modules`` is "" for the core
    kernel or program."""

    addrs: np.ndarray                    # uint64, sorted
    sizes: np.ndarray                    # uint64
    names: pl.Series                     # String
    modules: pl.Series | None = None     # String ("" = none) or None
    source: str = ""
    meta: dict = field(default_factory=dict)   # e.g. build_id, kind ("elf", "kallsyms", ...)

    def __len__(self) -> int:
        return len(self.addrs)

    # -- building ------------------------------------------------------------------------------

    @classmethod
    def build(cls, addrs, names, sizes=None, modules=None, rank=None, source: str = "",
              meta: dict | None = None) -> SymbolTable:
        """Sort by address; of symbols at one address keep the first of the best `rank`
        (lower is better; e.g. functions before labels), in input order otherwise, as the
        kernel does for aliases. Missing or zero sizes become the distance to the next
        distinct address (0 for the last)."""
        addrs = np.asarray(addrs, dtype=np.uint64)
        names = pl.Series("name", names, dtype=pl.String)
        n = len(addrs)
        rank = np.zeros(n, dtype=np.int64) if rank is None else np.asarray(rank, dtype=np.int64)
        order = np.lexsort((np.arange(n), rank, addrs))
        addrs = addrs[order]
        first = np.ones(n, dtype=bool)
        first[1:] = addrs[1:] != addrs[:-1]
        keep = order[first]
        addrs = addrs[first]
        gap = np.zeros(len(addrs), dtype=np.uint64)
        gap[:-1] = addrs[1:] - addrs[:-1]
        if sizes is None:
            sizes = gap
        else:
            sizes = np.asarray(sizes, dtype=np.uint64)[keep]
            sizes = np.where(sizes == 0, gap, sizes)
        mods = None
        if modules is not None:
            mods = pl.Series("module", modules, dtype=pl.String).gather(keep)
            if (mods == "").all():
                mods = None
        return cls(addrs=addrs, sizes=sizes, names=names.gather(keep), modules=mods,
                   source=source, meta=dict(meta or {}))

    def to_frame(self) -> pl.DataFrame:
        cols = {"addr": self.addrs, "size": self.sizes, "name": self.names}
        if self.modules is not None:
            cols["module"] = self.modules
        return pl.DataFrame(cols)

    @classmethod
    def from_frame(cls, frame: pl.DataFrame, source: str = "", meta: dict | None = None):
        return cls(addrs=frame["addr"].to_numpy(), sizes=frame["size"].to_numpy(),
                   names=frame["name"], modules=frame["module"] if "module" in frame.columns
                   else None, source=source, meta=dict(meta or {}))

    def address_of(self, name: str) -> int | None:
        hits = np.flatnonzero((self.names == name).to_numpy())
        return int(self.addrs[hits[0]]) if len(hits) else None

    # -- lookup --------------------------------------------------------------------------------

    def resolve(self, addresses, slide: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(symbol index or -1, offset) per address; `slide` is subtracted first (KASLR,
        load bias). An address past its symbol's size, or below the first symbol, gets -1."""
        q = np.asarray(addresses, dtype=np.uint64)
        if slide:
            q = q - np.uint64(slide % (1 << 64))
        if not len(self.addrs):
            return np.full(len(q), -1, dtype=np.int64), np.zeros(len(q), dtype=np.uint64)
        if getattr(self, "_ends", None) is None or len(self._ends) != len(self.addrs):
            last = self.addrs + (np.maximum(self.sizes, 1) - np.uint64(1))    # inclusive end
            self._ends = np.where(last < self.addrs, np.uint64(2**64 - 1), last)   # no wrap
        idx = np.searchsorted(self.addrs, q, side="right").astype(np.int64, copy=False)
        idx -= 1
        inside = q <= self._ends[idx]        # idx -1 reads the last entry: masked next
        inside &= idx >= 0
        offset = q - self.addrs[idx]
        outside = ~inside
        idx[outside] = -1
        offset[outside] = 0
        return idx, offset

    def lookup(self, addresses, slide: int = 0) -> pl.DataFrame:
        """Columns ``symbol`` (name), ``sym_offset``, ``sym_size`` and ``sym_text``
        (``name+0xoff/0xsize`` and `` [module]`` like the kernel's %pS), null where the
        address has no symbol."""
        idx, offset = self.resolve(addresses, slide)
        if not len(self.addrs):
            n = len(idx)
            return pl.DataFrame({"symbol": pl.Series([None] * n, dtype=pl.String),
                                 "sym_offset": pl.Series([None] * n, dtype=pl.UInt64),
                                 "sym_size": pl.Series([None] * n, dtype=pl.UInt64),
                                 "sym_text": pl.Series([None] * n, dtype=pl.String)})
        found = idx >= 0
        gather = np.where(found, idx, 0)
        names = self.names.gather(gather)
        sizes = self.sizes[gather]
        text = pl.concat_str([names, pl.lit("+"), hex_column(offset), pl.lit("/"),
                              hex_column(sizes)]) if len(gather) else names
        frame = pl.DataFrame({"symbol": names, "sym_offset": offset, "sym_size": sizes})
        frame = frame.with_columns(sym_text=pl.select(text).to_series() if len(gather)
                                   else pl.Series([], dtype=pl.String))
        if self.modules is not None:
            mods = self.modules.gather(gather)
            frame = frame.with_columns(
                sym_text=pl.when(mods != "").then(pl.concat_str([pl.col("sym_text"), pl.lit(" ["),
                                                                  mods, pl.lit("]")]))
                .otherwise(pl.col("sym_text")))
        mask = pl.Series(found)
        return frame.with_columns(
            pl.when(mask).then(pl.col(c)).otherwise(None).alias(c) for c in frame.columns)

    def symbolize(self, address: int | None, slide: int = 0) -> str | None:
        """One address as ``name+0xoff/0xsize`` (None when no symbol covers it)."""
        if address is None:
            return None
        idx, offset = self.resolve([int(address) % (1 << 64)], slide)
        i = int(idx[0])
        if i < 0:
            return None
        text = f"{self.names[i]}+{int(offset[0]):#x}/{int(self.sizes[i]):#x}"
        if self.modules is not None and self.modules[i]:
            text += f" [{self.modules[i]}]"
        return text
