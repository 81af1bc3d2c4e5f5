"""Load TARGETs (bundles and files of any supported format) into one Capture."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from kmltrace import bundle
from kmltrace.errors import KmltraceError
from kmltrace.formats import Parsed
from kmltrace.formats.sniff import parse_file
from kmltrace.schema import conform, empty_events


@dataclass
class Capture:
    """Everything the analysing verbs were given, parsed; errors kept per input."""

    inputs: list[Parsed] = field(default_factory=list)
    bundles: list[dict] = field(default_factory=list)     # manifests, each with "path"
    processes: list[dict] = field(default_factory=list)   # bundles' processes.json rows
    vmlinux: str | None = None
    #: parquet event tables (``kmltrace ingest`` output): scanned lazily, never read whole
    tables: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[KmltraceError]:
        return [e for p in self.inputs for e in p.errors]

    @property
    def failed_inputs(self) -> list[Parsed]:
        """Inputs that could not be used at all (an error and no events or metadata)."""
        return [p for p in self.inputs if p.errors and p.events.height == 0 and not p.meta]

    def events(self) -> pl.LazyFrame:
        """All inputs' events in one lazy table (not yet merged or sorted: see analysis)."""
        frames = [p.events.lazy() for p in self.inputs if p.events.height]
        if not frames:
            return empty_events().lazy()
        return conform(pl.concat(frames, how="diagonal_relaxed"))

    def table_events(self) -> pl.LazyFrame | None:
        """The parquet TARGETs' events as one lazy scan (None without any): each query reads
        only its own columns and row groups, so a table larger than memory can be analysed."""
        if not self.tables:
            return None
        scans = [pl.scan_parquet(t) for t in self.tables]
        return conform(scans[0] if len(scans) == 1 else pl.concat(scans, how="diagonal_relaxed"))

    def table_rows(self) -> int:
        """Rows of the parquet TARGETs (from their footers)."""
        return sum(p.count for p in self.inputs if p.format == "parquet" and p.path in self.tables)

    def metas(self, key: str) -> list:
        """Every input's ``meta[key]`` where present (e.g. "snapshot", "elf", "kallsyms")."""
        return [p.meta[key] for p in self.inputs if key in p.meta]


def load(targets: list[str | Path], vmlinux: str | None = None) -> Capture:
    """Parse every TARGET; a bad one is recorded as an error and the others still load."""
    capture = Capture(vmlinux=str(vmlinux) if vmlinux else None)
    for target in targets:
        path = Path(target)
        if path.is_dir():
            try:
                manifest, parsed = bundle.load_bundle(path)
            except KmltraceError as e:
                capture.inputs.append(Parsed(path=str(path), format="bundle", errors=[e]))
                continue
            capture.bundles.append({**manifest, "path": str(path)})
            # a bundle may name the ELF with its kernel's symbols (the lab's kernel.elf)
            elf = manifest.get("vmlinux")
            if capture.vmlinux is None and isinstance(elf, str) and (path / elf).is_file():
                capture.vmlinux = str(path / elf)
            capture.processes.extend(bundle.read_processes(path))
            capture.inputs.extend(parsed)
        elif is_event_table(path):
            capture.inputs.append(_event_table(capture, path))
        else:
            capture.inputs.append(parse_file(path))
    # a Linux kernel's dump also gives tasks and saved registers, read with drgn
    from kmltrace.collectors.snapshot import enrich_vmcore_inputs
    enrich_vmcore_inputs(capture)
    return capture


PARQUET_MAGIC = b"PAR1"


def is_event_table(path: Path) -> bool:
    """A parquet file (``kmltrace ingest`` writes the event table as one)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == PARQUET_MAGIC
    except OSError:
        return False


def _event_table(capture: Capture, path: Path) -> Parsed:
    """A parquet event table is not read here: only its footer (schema, row count)."""
    from kmltrace.errors import InputError

    try:
        names = pl.read_parquet_schema(path)
        rows = pl.scan_parquet(path).select(pl.len()).collect().item()
    except Exception as e:  # polars raises several kinds for a damaged footer
        return Parsed(path=str(path), format="parquet",
                      errors=[InputError(f"unreadable parquet event table: {e}", path=str(path))])
    if "event" not in names:
        return Parsed(path=str(path), format="parquet", errors=[InputError(
            "a parquet TARGET must be an event table (kmltrace ingest): no column 'event'",
            path=str(path))])
    capture.tables.append(str(path))
    return Parsed(path=str(path), format="parquet", event_count=rows)
