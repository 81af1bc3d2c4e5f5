#!/usr/bin/env python3
"""Text ingestion benchmark: kmltrace's text parsers side by side with the tools that write
the text, on one large real capture, in one run.

    python3 bench/bench_ingest_text.py [--large bench/work/large] [--no-write]

Input: the capture of bench/make_large_capture.py (>= 1.5 M events; regenerate it with
``sudo python3 bench/make_large_capture.py``). Measured, each in its own process under
``/usr/bin/time`` (wall time, CPU time, peak RSS):

- kmltrace: ``kmltrace ingest TEXT -o OUT.parquet`` of ``trace.txt`` (tracefs text),
  ``trace-cmd-report.txt`` and ``perf-script.txt``: the whole command (start-up, format
  detection, parsing batch by batch, attribution, the parquet written);
- kmltrace's parse batch by batch without writing (``text_parse(...).batches()``, what
  ``ingest`` runs before the parquet): the parser's own rate and memory;
- ``KMLTRACE_PURE=1 kmltrace ingest`` of ``trace.txt``: the polars-only path (no C scanner);
- kmltrace ``parse()`` of the same files (the whole event table in memory, as ``report``
  and the other verbs get it), for reference;
- ``trace-cmd report -i trace.dat`` writing the same text (to /dev/null);
- ``perf script --ns -i perf.data`` writing the same text (to /dev/null).

Goal (issue 2): >= 1.5 M lines/s and peak RSS < 1.5x the text's size. Results go to
bench/results.json under "ingest_text" (only that key is rewritten), with tool versions, the
inputs' sha256, and the machine's load average sampled every second during the run (the
machine may be shared: CPU seconds are the load-independent figure).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py
from common import REPO, byte_compile_kmltrace, save_result, sha256, tool_version  # noqa: E402

KEY = "ingest_text"
TEXTS = ("trace.txt", "trace-cmd-report.txt", "perf-script.txt")

#: parse() as report and the other verbs call it: the whole event table in memory
PARSE = """
import json, sys, time
from pathlib import Path
from kmltrace.formats.sniff import detect
path = Path(sys.argv[1])
module = detect(path)
start = time.perf_counter()
parsed = module.parse(path)
elapsed = time.perf_counter() - start
print(json.dumps({"format": parsed.format, "events": parsed.events.height,
                  "errors": len(parsed.errors), "parse_s": round(elapsed, 2),
                  "table_bytes": parsed.events.estimated_size()}))
"""

#: the parse batch by batch, as ``ingest`` runs it, without writing: the parser's own rate
BATCHES = """
import json, sys, time
from pathlib import Path
from kmltrace.formats.sniff import detect
from kmltrace.formats import text_scan
path = Path(sys.argv[1])
module = detect(path)
start = time.perf_counter()
parse = module.text_parse(path)
events = sum(frame.height for frame in parse.batches())
elapsed = time.perf_counter() - start
print(json.dumps({"format": module.NAME, "events": events, "errors": len(parse.errors),
                  "parse_s": round(elapsed, 2),
                  "accelerator": "C scanner" if text_scan.scanner() else "pure polars"}))
"""

INGEST = """
import sys
from kmltrace.cli import main
sys.argv = ["kmltrace", "ingest", sys.argv[1], "-o", sys.argv[2], "--json"]
main()
"""


class LoadSampler(threading.Thread):
    """The 1-minute load average, sampled every second while the benchmark runs."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples: list[float] = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.wait(1.0):
            self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict:
        values = self.samples or [os.getloadavg()[0]]
        return {"mean": round(sum(values) / len(values), 2), "min": round(min(values), 2),
                "max": round(max(values), 2), "samples": len(values)}


def timed(command: list[str], stdout=subprocess.PIPE, env=None) -> tuple[dict, str]:
    """Run `command` under /usr/bin/time: wall, user, sys seconds and peak RSS (bytes)."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        proc = subprocess.run(["/usr/bin/time", "-o", report.name, "-f", "%e %U %S %M",
                               *command], stdout=stdout, stderr=subprocess.PIPE, text=True,
                              env=env)
        if proc.returncode != 0:
            raise SystemExit(f"failed ({proc.returncode}): {' '.join(command)}\n{proc.stderr[-2000:]}")
        wall, user, system, rss_kb = report.read().split()[-4:]
    return ({"wall_s": float(wall), "cpu_s": round(float(user) + float(system), 2),
             "peak_rss_bytes": int(rss_kb) * 1024}, proc.stdout if stdout is subprocess.PIPE else "")


def rates(usage: dict, lines: int, size: int) -> dict:
    """Lines per wall and CPU second, and the peak RSS over the text's size."""
    return {"lines_per_s": round(lines / usage["wall_s"]),
            "lines_per_cpu_s": round(lines / usage["cpu_s"]) if usage["cpu_s"] else None,
            "peak_rss_over_text": round(usage["peak_rss_bytes"] / size, 2)}


def _shown(path: Path) -> str:
    """`path` relative to the repository when inside it (results hold no machine paths)."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def count_lines(path: Path) -> int:
    count = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            count += chunk.count(b"\n")
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--large", type=Path, default=REPO / "bench" / "work" / "large")
    parser.add_argument("--no-write", action="store_true", help="do not update results.json")
    opts = parser.parse_args()
    large = opts.large
    missing = [n for n in (*TEXTS, "trace.dat", "perf.data") if not (large / n).exists()]
    if missing:
        print(f"missing in {large}: {', '.join(missing)}; run "
              "`sudo python3 bench/make_large_capture.py` first", file=sys.stderr)
        return 1
    for tool in ("trace-cmd", "perf"):
        if shutil.which(tool) is None:
            print(f"needs {tool} on PATH", file=sys.stderr)
            return 1

    bytecode = byte_compile_kmltrace()
    load_before = os.getloadavg()
    sampler = LoadSampler()
    sampler.start()
    # "kmltrace": the goal's command (ingest to parquet); "kmltrace_parse": parse() alone
    # "kmltrace_batches": the parse batch by batch without the parquet (the parser's rate)
    results: dict = {"kmltrace": {}, "kmltrace_batches": {}, "kmltrace_pure": {},
                     "kmltrace_parse": {}, "tools": {}}
    with tempfile.TemporaryDirectory(prefix="kmltrace-bench-") as scratch:
        for name in TEXTS:
            path = large / name
            lines = count_lines(path)
            size = path.stat().st_size
            out = Path(scratch) / "events.parquet"
            usage, stdout = timed([sys.executable, "-c", INGEST, str(path), str(out)])
            report = json.loads(stdout)
            results["kmltrace"][name] = {
                "command": f"kmltrace ingest {_shown(path)} -o OUT.parquet --json",
                "format": report["inputs"][0]["format"], "events": report["events"],
                "errors": len(report["errors"]), "precision": report["inputs"][0].get("precision"),
                "parquet_bytes": out.stat().st_size,
                **usage, "lines": lines, "bytes": size, **rates(usage, lines, size),
            }
            out.unlink()
            usage_b, stdout = timed([sys.executable, "-c", BATCHES, str(path)])
            results["kmltrace_batches"][name] = {
                **json.loads(stdout.strip().splitlines()[-1]), **usage_b,
                **rates(usage_b, lines, size)}
            print(f"kmltrace batches {name}: {usage_b['wall_s']} s "
                  f"({lines / usage_b['wall_s'] / 1e6:.2f} M lines/s), cpu {usage_b['cpu_s']} s, "
                  f"peak RSS {usage_b['peak_rss_bytes'] / size:.2f}x text", flush=True)
            if name == "trace.txt":
                # the pure polars path (no C scanner), for reference, in the same run
                usage_r, _ = timed([sys.executable, "-c", INGEST, str(path), str(out)],
                                   env={**os.environ, "KMLTRACE_PURE": "1"})
                out.unlink()
                results["kmltrace_pure"][name] = {
                    "command": f"KMLTRACE_PURE=1 kmltrace ingest {_shown(path)} -o OUT.parquet",
                    **usage_r, **rates(usage_r, lines, size)}
                print(f"kmltrace ingest (pure) {name}: {usage_r['wall_s']} s", flush=True)
            usage_p, stdout = timed([sys.executable, "-c", PARSE, str(path)])
            results["kmltrace_parse"][name] = {
                **json.loads(stdout.strip().splitlines()[-1]), **usage_p,
                **rates(usage_p, lines, size)}
            print(f"kmltrace parse() {name}: {usage_p['wall_s']} s, cpu {usage_p['cpu_s']} s, "
                  f"peak RSS {usage_p['peak_rss_bytes'] / 2**20:.0f} MiB", flush=True)
            print(f"kmltrace ingest {name}: {lines} lines in {usage['wall_s']} s "
                  f"({lines / usage['wall_s'] / 1e6:.2f} M lines/s, cpu {usage['cpu_s']} s = "
                  f"{lines / usage['cpu_s'] / 1e6:.2f} M lines per CPU s), peak RSS "
                  f"{usage['peak_rss_bytes'] / 2**20:.0f} MiB = "
                  f"{usage['peak_rss_bytes'] / size:.2f}x text", flush=True)

    # the tools that write the same texts from the same recording
    for tool, command, text in (
            ("trace-cmd report", ["trace-cmd", "report", "-i", large / "trace.dat"],
             "trace-cmd-report.txt"),
            ("perf script", ["perf", "script", "--ns", "-i", large / "perf.data"],
             "perf-script.txt")):
        lines = count_lines(large / text)
        usage, _ = timed([str(c) for c in command], stdout=subprocess.DEVNULL)
        shown = " ".join(_shown(c) if isinstance(c, Path) else c for c in command)
        results["tools"][tool] = {
            **usage, "lines": lines, "lines_per_s": round(lines / usage["wall_s"]),
            "lines_per_cpu_s": round(lines / usage["cpu_s"]) if usage["cpu_s"] else None,
            "command": f"{shown} > /dev/null"}
        print(f"{tool}: {lines} lines in {usage['wall_s']} s "
              f"({lines / usage['wall_s'] / 1e6:.2f} M lines/s)", flush=True)

    sampler.stop.set()
    import polars

    import kmltrace
    entry = {
        "command": "python3 bench/bench_ingest_text.py",
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "goal": {"lines_per_s": 1_500_000, "peak_rss_over_text": 1.5},
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                    "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                    "loadavg_1min_during": sampler.summary(),
                    "note": "shared machine: other jobs run at the same time; cpu_s is "
                            "the process's own CPU time"},
        "versions": {"kmltrace": kmltrace.__version__, "polars": polars.__version__,
                     "python": platform.python_version(),
                     "trace-cmd": tool_version(["trace-cmd", "--version"]),
                     "perf": tool_version(["perf", "--version"])},
        "bytecode": bytecode,
        "inputs": {name: {"sha256": sha256(large / name), "bytes": (large / name).stat().st_size}
                   for name in (*TEXTS, "trace.dat", "perf.data")},
        **results,
    }
    ok = all(r["lines_per_s"] >= 1_500_000 and r["peak_rss_over_text"] < 1.5
             for r in results["kmltrace"].values())
    entry["goal_met"] = ok
    entry["batches_goal_met"] = all(
        r["lines_per_s"] >= 1_500_000 and r["peak_rss_over_text"] < 1.5
        for r in results["kmltrace_batches"].values())
    print(json.dumps({"goal_met": ok, "batches_goal_met": entry["batches_goal_met"]}))
    if not opts.no_write:
        save_result(KEY, entry)
    return 0


if __name__ == "__main__":
    sys.exit(main())
