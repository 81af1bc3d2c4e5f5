"""One TUI session's data, filled in stages by the loading thread.

No polars here (nor in incident_model): the first screen is drawn before polars is imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import polars as pl

    from kmltrace.tui.model import ParquetRows


@dataclass
class Loaded:
    """What the screens draw from; the loading thread fills it stage by stage."""

    targets: list[str]
    capture: object | None = None           # kmltrace.capture.Capture
    events: pl.DataFrame | None = None      # merged event table
    report: dict | None = None              # CONTRACT.md report object
    snapshots: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    preview: ParquetRows | None = None    # an ingested table's rows, before it is read


PARQUET_MAGIC = b"PAR1"


# the same test as kmltrace.capture.is_event_table, kept here because importing capture pulls
# in polars, which the first screen must not wait for
def is_parquet(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == PARQUET_MAGIC
    except OSError:
        return False
