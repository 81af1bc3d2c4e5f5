"""What every benchmark shares: input hashes and the one results file.

Each benchmark owns one top-level key of bench/results.json and rewrites only that key, so
benchmarks can be rerun one at a time. Paths of this machine are written relative to the
repository (or to ~), so the results read the same from any clone.
"""

from __future__ import annotations

import compileall
import hashlib
import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results.json"


def sha256(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tool_version(command: list[str]) -> str:
    """The first non-empty line a tool prints for `command` (``perf --version``, ...), on
    stdout or stderr; "not installed" when it cannot be run."""
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    lines = (out.stdout + out.stderr).splitlines()
    return next((line.strip() for line in lines if line.strip()), "unknown")


def _portable(value):
    if isinstance(value, dict):
        return {k: _portable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_portable(v) for v in value]
    if isinstance(value, str):
        value = value.replace(str(REPO) + "/", "")
        home = os.path.expanduser("~")
        if home not in ("", "/"):
            value = value.replace(home + "/", "~/")
    return value


def save_result(key: str, result: dict) -> None:
    """Replace `key` in bench/results.json with `result`, keeping the other keys as they are."""
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[key] = _portable(result)
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")


def byte_compile_kmltrace() -> str:
    """Write the bytecode of the kmltrace package the benchmark runs, as ``pip install``
    does, so no timed process compiles its modules. An editable install gets no bytecode
    at install time, and with PYTHONDONTWRITEBYTECODE set (this machine sets it) none at run
    time either: each process then compiled ~70 modules, 0.2-0.4 s of its wall time.
    Returns what the results say about it."""
    import kmltrace

    package = Path(kmltrace.__file__).parent
    compileall.compile_dir(package, quiet=1)
    return "compiled before the run (as pip install does)"
