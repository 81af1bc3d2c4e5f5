"""perf.data (perf record's binary output), read through ``perf script`` where perf is
installed; the text is then parsed by the perf_script format."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import polars as pl

from kmltrace.errors import InputError
from kmltrace.formats import Parsed

NAME = "perf_data"
MAGIC = b"PERFILE2"
TIMEOUT_S = 600


def sniff(head: bytes) -> bool:
    return head.startswith(MAGIC)


def parse(path: Path) -> Parsed:
    from kmltrace.formats import perf_script

    path = Path(path)
    perf = shutil.which("perf")
    if perf is None:
        return Parsed(path=str(path), format=NAME, errors=[InputError(
            "perf.data is read with perf, which is not installed (Debian: linux-perf)",
            path=str(path))])
    with tempfile.TemporaryDirectory(prefix="kmltrace-perf-") as tmp:
        text = Path(tmp) / "perf.txt"
        try:
            with text.open("wb") as out:
                result = subprocess.run([perf, "script", "-i", str(path)], stdout=out,
                                        stderr=subprocess.PIPE, timeout=TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as e:
            return Parsed(path=str(path), format=NAME,
                          errors=[InputError(f"perf script failed: {e}", path=str(path))])
        if result.returncode != 0 or text.stat().st_size == 0:
            why = result.stderr.decode(errors="replace").strip().splitlines()
            return Parsed(path=str(path), format=NAME, errors=[InputError(
                "perf script could not read it" + (f": {why[-1]}" if why else ""),
                path=str(path))])
        parsed = perf_script.parse(text)
    # rows point at lines of `perf script -i FILE` output: say so, and name the real file
    events = parsed.events.with_columns(pl.lit(str(path)).alias("file"))
    for error in parsed.errors:
        error.path = f"{path} (perf script output)"
    return Parsed(path=str(path), format=NAME, events=events, errors=parsed.errors,
                  meta={**parsed.meta, "via": "perf script"})
