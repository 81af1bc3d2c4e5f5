"""Input formats: one parser module per format, each detected from content (see sniff.py).

A format module exposes ``NAME`` (str), ``sniff(head: bytes) -> bool`` (looks at the first
bytes of a file) and ``parse(path: Path) -> Parsed``. Parsers return what they could read and
collect the problems they met as :class:`~kmltrace.errors.KmltraceError` (with path and line
or offset) instead of stopping at the first one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from kmltrace.schema import empty_events


@dataclass
class Parsed:
    """What one input gave: its events (conformed to the schema), errors and metadata.

    ``meta`` carries what a format knows beyond events, e.g. ``lost_events`` (int),
    ``precision`` ("ns" | "us"), ``clock`` (trace clock name), ``kallsyms`` (path),
    ``snapshot`` (the snapshot object), ``elf`` (path of an ELF target).
    """

    path: str
    format: str
    events: pl.DataFrame = field(default_factory=empty_events)
    errors: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    #: rows written where the events were streamed to a file instead of kept (``ingest``)
    event_count: int | None = None

    @property
    def count(self) -> int:
        """How many events this input gave."""
        return self.events.height if self.event_count is None else self.event_count

    def summary(self) -> dict:
        """The report's ``inputs`` entry for this input."""
        out = {"path": self.path, "format": self.format, "events": self.count,
               "errors": [str(e) for e in self.errors]}
        for key in ("lost_events", "precision", "clock"):
            if key in self.meta:
                out[key] = self.meta[key]
        return out


def parse_path(path: str | Path) -> Parsed:
    """Detect the format of the file at `path` and parse it; errors land in ``Parsed.errors``."""
    from kmltrace.formats.sniff import parse_file

    return parse_file(Path(path))
