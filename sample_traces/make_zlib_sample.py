#!/usr/bin/env python3
"""Regenerate sample_traces/host-6.18-zlib: the real workload capture's trace.dat
(host-6.18-workload, zstd) copied as a version 7 trace.dat with zlib compression, written by
Debian's libtracecmd through sample_traces/tracedat_zlib.c.

    python3 sample_traces/make_zlib_sample.py [OUT_DIR] [--input TRACE.DAT]

Debian's trace-cmd is built without zlib, so `trace-cmd convert --compression zlib` is refused
here; tracedat_zlib.c registers with libtracecmd the zlib compression trace-cmd's own zlib
support registers, and copies the file as `trace-cmd convert` does. It then reads the copy back
with libtracecmd: its event count is kept in ``libtracecmd.txt`` (the tests' reference).
Needs gcc, libtracecmd-dev and zlib1g-dev.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "tracedat_zlib.c"
INPUT = HERE / "host-6.18-workload" / "trace.dat"
OUT = HERE / "host-6.18-zlib"


def build(workdir: Path) -> Path:
    exe = workdir / "tracedat_zlib"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(exe), str(SOURCE), "-ltracecmd",
                    "-l:libtraceevent.so.1", "-lz"], check=True)
    return exe


def convert(source: Path, out: Path) -> int:
    """Write `out`/trace.dat from `source`; returns libtracecmd's event count of the copy."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kmlzlib-") as work:
        exe = build(Path(work))
        result = subprocess.run([str(exe), str(source), str(out / "trace.dat")],
                                capture_output=True, text=True, check=True)
    found = re.fullmatch(r"events=(\d+)\n", result.stdout)
    if not found or int(found[1]) == 0:
        raise SystemExit(f"tracedat_zlib: libtracecmd read no events back: {result.stdout!r}")
    (out / "libtracecmd.txt").write_text(result.stdout)
    return int(found[1])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _first_line(argv: list[str]) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    return next((line.strip() for line in (result.stdout + result.stderr).splitlines()
                 if line.strip()), "unknown")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", type=Path, default=OUT)
    parser.add_argument("--input", type=Path, default=INPUT)
    opts = parser.parse_args()
    for tool in ("gcc", "trace-cmd"):
        if shutil.which(tool) is None:
            print(f"needs {tool} (and libtracecmd-dev, zlib1g-dev)", file=sys.stderr)
            return 2
    events = convert(opts.input, opts.out)
    zlib_dev = _first_line(["dpkg-query", "-W", "-f", "${Version}", "zlib1g-dev"])
    libtracecmd = _first_line(["dpkg-query", "-W", "-f", "${Version}", "libtracecmd1"])
    shown = opts.input.resolve()
    shown = shown.relative_to(HERE.parent) if shown.is_relative_to(HERE.parent) else shown
    (opts.out / "PROVENANCE.md").write_text(PROVENANCE.format(
        date=datetime.date.today().isoformat(), input=shown, input_sha=_sha256(opts.input),
        output_sha=_sha256(opts.out / "trace.dat"), events=events, libtracecmd=libtracecmd,
        zlib=zlib_dev, host=os.uname().release, gcc=_first_line(["gcc", "--version"])))
    print(f"wrote {opts.out}/trace.dat ({events} events read back by libtracecmd)")
    return 0


PROVENANCE = """# host-6.18-zlib: the workload's trace.dat as trace.dat version 7 with zlib

Real events, rewritten. `trace.dat` holds the events of `{input}` (sha256
{input_sha}; the real capture of host-6.18-workload, see its PROVENANCE.md), copied by
Debian's libtracecmd {libtracecmd} (the library of trace-cmd 3.1.6) as file version 7 with
zlib compression. Made on {date}, host kernel {host}, {gcc}, zlib1g-dev {zlib}, by

    python3 sample_traces/make_zlib_sample.py

which builds and runs `sample_traces/tracedat_zlib.c`:

    gcc -O2 -Wall -o tracedat_zlib tracedat_zlib.c -ltracecmd -l:libtraceevent.so.1 -lz
    tracedat_zlib {input} trace.dat > libtracecmd.txt

Why not `trace-cmd convert --compression zlib`: Debian builds trace-cmd with zstd only, and
refuses it. tracedat_zlib.c registers a "zlib" compression protocol with libtracecmd (name
"zlib", version zlibVersion(), each block compressed by zlib's compress2 at
Z_BEST_COMPRESSION and read by uncompress, as trace-cmd's own zlib support does), then calls
libtracecmd's tracecmd_copy (what `trace-cmd convert --file-version 7 --compression zlib`
calls). Sections, chunk headers and options are libtracecmd's; only the compressed bytes
come from zlib through the protocol. The program then reads the copy back with libtracecmd
(every buffer): `libtracecmd.txt` holds its event count, {events}.

Files:
- `trace.dat` (sha256 {output_sha})
- `libtracecmd.txt`: `events={events}`
"""

if __name__ == "__main__":
    raise SystemExit(main())
