"""How much memory the analysis may use, and whether a capture needs the streaming engine."""

from __future__ import annotations

import resource
from pathlib import Path

import polars as pl

#: in-memory bytes per row and column of an event table (8-byte values, strings a little more)
BYTES_PER_CELL = 10
#: stay in memory only when the whole table would take at most this share of what is available
SHARE = 0.25


def available_bytes() -> int:
    """Memory this process may still use: MemAvailable, capped by an address-space limit."""
    available = 1 << 62
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        available = min(available, soft)
    return available


def table_bytes(capture) -> int:
    """An estimate of the parquet TARGETs' size once read whole (from their footers)."""
    total = 0
    for path in getattr(capture, "tables", []):
        columns = len(pl.read_parquet_schema(path))
        rows = pl.scan_parquet(path).select(pl.len()).collect().item()
        total += rows * columns * BYTES_PER_CELL
    return total


def needs_streaming(capture) -> bool:
    """True when reading the capture's event tables whole could exhaust memory."""
    return table_bytes(capture) > SHARE * available_bytes()
