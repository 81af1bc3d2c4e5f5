#!/usr/bin/env python3
"""Binary ftrace decoding speed: kmltrace vs libtracecmd (C) vs `trace-cmd report`.

    python3 bench/bench_binary.py [--large bench/work/large] [--repeat 3] [--no-write]

Reads the large real capture of bench/make_large_capture.py (trace.dat v7 zstd and
trace-v6.dat uncompressed, >= 1.5 M events) and measures, side by side in one run:

* kmltrace: ``kmltrace.formats.tracedat.parse`` in a fresh subprocess (import excluded from
  the time, peak RSS of that process, the resulting table's estimated size), with the
  default ``raw_text="all"`` and with ``raw_text="untyped"``;
* the C reference ``bench/tracecmd_ref.c`` (libtracecmd iterating every event, reading
  timestamp, CPU, type and pid), built here with gcc into bench/work/;
* ``trace-cmd report -i FILE > /dev/null``.

Wall time and CPU time (user + sys of the child) are both recorded: the machine may be
shared, and the load average at the start and end is recorded with the figures. The best
of --repeat runs of each tool is kept. Results go to bench/results.json under "binary"
(only that key is rewritten), with tool versions and the inputs' sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results.json"
WORK = REPO / "bench" / "work"

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from kmltrace.formats import tracedat
t1 = time.perf_counter()
parsed = tracedat.parse(sys.argv[1], raw_text=sys.argv[2])
t2 = time.perf_counter()
print(json.dumps({"events": parsed.events.height, "seconds": t2 - t1, "import_seconds": t1 - t0,
                  "table_bytes": parsed.events.estimated_size(),
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "errors": [str(e) for e in parsed.errors]}))
"""


def run(command: list[str], stdout=subprocess.PIPE) -> tuple[float, float, str]:
    """Wall and CPU (user + sys) seconds of one child, and its stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(command, stdout=stdout, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {proc.stderr.strip()[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stdout if stdout == subprocess.PIPE else ""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def version(command: list[str]) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    text = (out.stdout + out.stderr).strip().splitlines()
    return next((line.strip() for line in text if line.strip()), "unknown")


def build_reference() -> Path:
    WORK.mkdir(parents=True, exist_ok=True)
    exe = WORK / "tracecmd_ref"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(exe), str(REPO / "bench" / "tracecmd_ref.c"),
                    "-ltracecmd", "-l:libtraceevent.so.1"], check=True)
    return exe


def best(samples: list[dict]) -> dict:
    return min(samples, key=lambda s: s["wall_seconds"])


def measure(path: Path, ref: Path, repeat: int) -> dict:
    python = sys.executable
    kml, kml_untyped, c_ref, report = [], [], [], []
    for _ in range(repeat):
        for mode, samples in (("all", kml), ("untyped", kml_untyped)):
            wall, cpu, out = run([python, "-c", CHILD, str(path), mode])
            child = json.loads(out)
            samples.append({"wall_seconds": child["seconds"], "process_wall_seconds": wall,
                            "process_cpu_seconds": cpu, **{k: child[k] for k in (
                                "events", "table_bytes", "peak_rss_bytes", "import_seconds",
                                "errors")}})
        wall, cpu, out = run([str(ref), str(path)])
        fields = dict(item.split("=") for item in out.split())
        c_ref.append({"wall_seconds": wall, "cpu_seconds": cpu, "events": int(fields["events"]),
                      "inner_seconds": float(fields["seconds"])})
        with open(os.devnull, "w") as null:
            wall, cpu, _ = run(["trace-cmd", "report", "-i", str(path)], stdout=null)
        report.append({"wall_seconds": wall, "cpu_seconds": cpu})
    k, c, r = best(kml), best(c_ref), best(report)
    ku = best(kml_untyped)
    events = k["events"]
    return {
        "file": str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path),
        "bytes": path.stat().st_size,
        "sha256": sha256(path),
        "events": events,
        "kmltrace": {**k, "events_per_second": round(events / k["wall_seconds"]),
                     "peak_rss_over_table": round(k["peak_rss_bytes"] / k["table_bytes"], 2)},
        "kmltrace_raw_untyped": {**ku, "events_per_second": round(events / ku["wall_seconds"]),
                                 "peak_rss_over_table": round(ku["peak_rss_bytes"] /
                                                              ku["table_bytes"], 2),
                                 "note": "raw_text='untyped': no raw text for events whose "
                                         "fields are all schema columns"},
        "libtracecmd_c": {**c, "events_per_second": round(c["events"] / c["wall_seconds"])},
        "trace_cmd_report": {**r, "events_per_second": round(events / r["wall_seconds"])},
        "speedup_vs_trace_cmd_report": round(r["wall_seconds"] / k["wall_seconds"], 2),
        "speedup_vs_libtracecmd_c": round(c["wall_seconds"] / k["wall_seconds"], 2),
        "speedup_vs_trace_cmd_report_raw_untyped": round(r["wall_seconds"] / ku["wall_seconds"], 2),
        "all_runs": {"kmltrace": kml, "kmltrace_raw_untyped": kml_untyped,
                     "libtracecmd_c": c_ref, "trace_cmd_report": report},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--large", type=Path, default=WORK / "large")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="do not update results.json")
    opts = parser.parse_args()
    inputs = [opts.large / "trace.dat", opts.large / "trace-v6.dat"]
    missing = [str(p) for p in inputs if not p.exists()]
    if missing:
        print(f"missing {', '.join(missing)}: run `sudo python3 bench/make_large_capture.py` "
              "first", file=sys.stderr)
        return 2
    if not shutil.which("trace-cmd") or not shutil.which("gcc"):
        print("needs trace-cmd and gcc (with libtracecmd1)", file=sys.stderr)
        return 2
    ref = build_reference()
    load_start = os.getloadavg()
    runs = {p.name: measure(p, ref, opts.repeat) for p in inputs}
    load_end = os.getloadavg()
    import numpy
    import polars
    import zstandard

    import kmltrace
    result = {
        "measured": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "command": "python3 bench/bench_binary.py --repeat " + str(opts.repeat),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average_start": [round(x, 2) for x in load_start],
                    "load_average_end": [round(x, 2) for x in load_end],
                    "note": "shared machine: wall times include waiting for a CPU; the CPU "
                            "seconds show the work each tool did"},
        "goal": {"events_per_second": 2_500_000, "speedup_vs_trace_cmd_report": 3,
                 "peak_rss_over_table": 2},
        "versions": {"kmltrace": kmltrace.__version__, "python": platform.python_version(),
                     "polars": polars.__version__, "numpy": numpy.__version__,
                     "zstandard": zstandard.__version__,
                     "trace-cmd": version(["trace-cmd", "--version"]),
                     "gcc": version(["gcc", "--version"])},
        "inputs": runs,
    }
    print(json.dumps(result, indent=2))
    if not opts.no_write:
        data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        data["binary"] = result
        RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
