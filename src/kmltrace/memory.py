"""How much memory the analysis may use, whether a capture needs the streaming engine, and
which pages the decoders ask for."""

from __future__ import annotations

import os
import resource
from contextlib import contextmanager
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


# -- huge pages or not ------------------------------------------------------------------------

#: virtio-balloon devices; feature bit 5 is VIRTIO_BALLOON_F_REPORTING (free page reporting)
BALLOON = Path("/sys/bus/virtio/drivers/virtio_balloon")
_REPORTING_BIT = 5


def reports_free_memory(balloon: Path = BALLOON) -> bool:
    """Whether this machine is a VM that hands its free memory back to the host (a
    virtio-balloon device with free page reporting), so that the first touch of memory it
    freed a while ago waits for the host."""
    for device in balloon.glob("virtio*"):
        try:
            features = (device / "features").read_text().strip()
        except OSError:
            continue
        if len(features) > _REPORTING_BIT and features[_REPORTING_BIT] == "1":
            return True
    return False


def huge_pages_pay() -> bool:
    """Whether the decoders' big fresh outputs should be advised into transparent huge pages.

    KMLTRACE_HUGE_PAGES=1 or 0 decides. Otherwise yes (a fault per 2 MiB instead of per
    4 KiB), except where free memory is reported to the host: a huge page is then always a
    2 MiB block the host took back, while 4 KiB pages often come from memory freed too
    recently, or in too small pieces, to be reported (on this project's VM a trace.dat decode
    took 0.87-1.10 s without huge pages against 1.05-1.46 s with them; docs/binary.md)."""
    setting = os.environ.get("KMLTRACE_HUGE_PAGES")
    if setting in ("0", "1"):
        return setting == "1"
    return not reports_free_memory()


def _numpy_hugepage_switch():
    """numpy's own switch for advising its big arrays into huge pages (private, stable since
    numpy 1.20; None where it is missing)."""
    import numpy as np

    for module in ("_core", "core"):
        switch = getattr(getattr(getattr(np, module, None), "multiarray", None),
                         "_set_madvise_hugepage", None)
        if switch is not None:
            return switch
    return None


@contextmanager
def fresh_pages(accelerator=None):
    """While a decode runs: its big outputs (the C accelerator's blocks and numpy's arrays)
    in huge pages or not, as huge_pages_pay says; both switches restored after (they are
    process-wide)."""
    huge = huge_pages_pay()
    numpy_switch = _numpy_hugepage_switch()
    c_switch = getattr(accelerator, "set_huge_pages", None)
    numpy_before = numpy_switch(huge) if numpy_switch else None
    c_before = c_switch(huge) if c_switch else None
    try:
        yield huge
    finally:
        if numpy_switch:
            numpy_switch(numpy_before)
        if c_switch:
            c_switch(c_before)
