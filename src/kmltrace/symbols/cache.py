"""Parsed symbol tables cached as parquet under ``$XDG_CACHE_HOME/kmltrace/symbols``.

The key is the ELF build-id when there is one (the same kernel build anywhere), else the
file's resolved path, size and mtime, so an edited file is parsed again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import polars as pl

from kmltrace.symbols.table import SymbolTable

#: bump when the table layout or the reading rules change
CACHE_VERSION = 5


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kmltrace" / "symbols"


def file_key(path: Path, kind: str, build_id: str | None = None) -> str:
    if build_id:
        raw = f"v{CACHE_VERSION}:{kind}:build-id:{build_id}"
    else:
        st = path.stat()
        raw = f"v{CACHE_VERSION}:{kind}:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def cached(path: Path, kind: str, parse: Callable[[Path], SymbolTable],
           build_id: str | None = None) -> SymbolTable:
    """The table of `path` from the cache, or parsed by `parse` and stored. A cache that
    cannot be read or written is only slower, never an error."""
    try:
        key = file_key(path, kind, build_id)
    except OSError:
        return parse(path)
    store = cache_dir() / f"{key}.parquet"
    try:
        frame = pl.read_parquet(store)
        meta = json.loads(pl.read_parquet_metadata(store).get("kmltrace") or "{}")
        return SymbolTable.from_frame(frame, source=str(path), meta=meta)
    except Exception:   # missing, stale layout or damaged: parse again
        pass
    table = parse(path)
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        tmp = store.with_name(f".{store.name}.{os.getpid()}.tmp")
        table.to_frame().write_parquet(tmp, metadata={"kmltrace": json.dumps(table.meta, default=str)})
        os.replace(tmp, store)
    except Exception:
        pass
    return table
