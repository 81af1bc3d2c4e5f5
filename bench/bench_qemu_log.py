#!/usr/bin/env python3
"""Benchmark of the QEMU log post-mortem (key "qemu_log" of bench/results.json).

Input: a >= 200 MB ``-d int,cpu_reset,in_asm`` log made by concatenating a real one
(sample_traces/qemu-tiny/starvation-int-inasm.log, QEMU 7.2 TCG: SeaBIOS boot in_asm blocks,
a CPL 0 stack starvation #PF -> #DF -> triple fault) until it reaches the size; written to
bench/work/qemu_log/ (not committed). Measured in the same run, each the median of REPEATS:

  grep -c ' v='          the floor: one pass over the bytes counting exception records
  parse                  kmltrace.formats.qemu_log.parse (every record, dump and in_asm block)
  postmortem             kmltrace postmortem --json FILE, end to end in a child process
                         (load, merge, chains and incidents, JSON out). Goal: < 5 s.
The machine is shared: the 1-minute load average before and after is recorded, and the
parser's CPU time (user+sys, all threads) beside its wall time.

    python3 bench/bench_qemu_log.py [--size-mb 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py
from common import save_result, sha256, tool_version  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "sample_traces" / "qemu-tiny" / "starvation-int-inasm.log"
WORK = REPO / "bench" / "work" / "qemu_log"


def make_input(size_mb: int) -> Path:
    chunk = SOURCE.read_bytes()
    copies = -(-size_mb * 1_000_000 // len(chunk))
    out = WORK / f"int-inasm-{size_mb}mb.log"
    if not out.exists() or out.stat().st_size != copies * len(chunk):
        WORK.mkdir(parents=True, exist_ok=True)
        with open(out, "wb") as f:
            for _ in range(copies):
                f.write(chunk)
    return out


def timed(fn, repeats: int) -> tuple[float, object]:
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


def cpu_timed(fn, repeats: int) -> float:
    """Median CPU seconds (user+sys of this process, all threads): what the work costs,
    independent of how many other jobs share the machine's cores."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    import polars as pl

    from kmltrace.formats import qemu_log

    path = make_input(args.size_mb)
    grep_s, grep_count = timed(lambda: subprocess.run(
        ["grep", "-c", " v=", str(path)], capture_output=True, text=True).stdout.strip(),
        args.repeats)
    load_before = os.getloadavg()
    parse_s, parsed = timed(lambda: qemu_log.parse(path), args.repeats)
    parse_cpu = cpu_timed(lambda: qemu_log.parse(path), args.repeats)
    exceptions = parsed.events.filter(pl.col("event") == "exception").height

    def postmortem():
        out = subprocess.run([sys.executable, "-m", "kmltrace", "postmortem", "--json", str(path)],
                             capture_output=True, text=True, timeout=600)
        return json.loads(out.stdout)
    post_s, report = timed(postmortem, args.repeats)
    kinds: dict[str, int] = {}
    for incident in report.get("incidents", []):
        kinds[incident["kind"]] = kinds.get(incident["kind"], 0) + 1

    result = {
        "command": f"python3 bench/bench_qemu_log.py --size-mb {args.size_mb} "
                   f"--repeats {args.repeats}",
        "input": {"path": str(path.relative_to(REPO)), "bytes": path.stat().st_size,
                  "sha256": sha256(path), "made_from": str(SOURCE.relative_to(REPO)),
                  "lines": parsed.events["line"].max()},
        "seconds": {"grep_c": round(grep_s, 3), "parse": round(parse_s, 3),
                    "parse_cpu": round(parse_cpu, 3), "postmortem_cli": round(post_s, 3)},
        "loadavg_1min": {"before": round(load_before[0], 2),
                         "after": round(os.getloadavg()[0], 2)},
        "goal": "postmortem of a 200 MB -d int,in_asm log < 5 s",
        "goal_met": post_s < 5.0,
        "records": {"grep_c_v": int(grep_count), "exception_rows": exceptions,
                    "chains": len(report.get("chains", [])), "incidents": kinds},
        "versions": {"python": platform.python_version(), "polars": pl.__version__,
                     "grep": tool_version(["grep", "--version"])},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    save_result("qemu_log", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
