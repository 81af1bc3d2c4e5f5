#!/usr/bin/env python3
"""Regenerate the large real capture the benchmarks read: >= 1.5 million events in bench/work/large/.

Run as root on a machine with tracefs, gcc, trace-cmd and perf:

    sudo python3 bench/make_large_capture.py [--runs 4] [--out bench/work/large]

It runs the sample workload (sample_traces/workload/kmlwork.c) several times in a row with
heavy arguments (many getppid calls and page faults), under `perf record`, while two tracefs
instances filtered to the process tree record it (the same events the committed samples have).
It writes, from that one run:

    trace.txt              tracefs `trace` text (microseconds)
    bundle/                raw trace_pipe_raw pages of the same instance (kmltrace bundle)
    trace.dat, trace-v6.dat  trace-cmd extract of the second instance: v7 zstd, v6 uncompressed
    trace-cmd-report.txt   `trace-cmd report` of trace.dat
    perf.data, perf-script.txt  perf record of the same run, `perf script --ns`
    workload.out, expected.json, summary.json  the workloads' own numbers, sizes, event counts

The output is large (hundreds of MB) and is not committed (bench/work/ is gitignored).
A 10 M-event table can be made from it by replicating the events.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "sample_traces"))
import make_samples as ms  # noqa: E402  (the sample generator: instances, bundle, extract)

#: per run: N stack + N heap pages, M getppid, child K getppid + P heap pages
HEAVY_ARGS = (1500, 200_000, 20_000, 1500)
MIN_EVENTS = 1_500_000


def count_events(trace_txt: Path) -> int:
    n = 0
    with open(trace_txt, "rb") as f:
        for line in f:
            if not line.startswith(b"#"):
                n += 1
    return n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=4, help="workload runs in a row (default 4)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "work" / "large")
    parser.add_argument("--buffer-kb", type=int, default=131072,
                        help="per-CPU ring buffer of each instance (default 128 MiB)")
    opts = parser.parse_args()
    if os.geteuid() != 0 or not (ms.TRACEFS / "instances").is_dir():
        print("make_large_capture.py must run as root with tracefs at /sys/kernel/tracing",
              file=sys.stderr)
        return 2
    try:
        import kmltrace  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(REPO / "src"))
    out = opts.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    args = " ".join(str(a) for a in HEAVY_ARGS)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kmlbig-") as tmp:
        build = Path(tmp)
        os.chmod(build, 0o755)
        ms.build_workload(build)
        maps_dir = build / "maps"
        maps_dir.mkdir()
        # no overwrite: a full buffer drops new events (counted in stats) instead of old ones
        text = ms.Instance("bigtext", opts.buffer_kb, options={"overwrite": "0"})
        dat = ms.Instance("bigdat", opts.buffer_kb, options={"overwrite": "0"})
        instances = [text, dat]
        try:
            starts = " ".join(f"echo $$ > {i.path}/set_event_pid;" for i in instances) + " " + \
                " ".join(f"echo 1 > {i.path}/tracing_on;" for i in instances)
            markers = " ".join(f"-m {i.path}/trace_marker" for i in instances)
            loop = "; ".join(f"./kmlwork {markers} -d {maps_dir} {args}" for _ in range(opts.runs))
            perf_ok, perf_refused = ms.perf_events(build)
            command = ["perf", "record", "-q", "-m", "4096", "-o", str(out / "perf.data"),
                       "-e", ",".join(perf_ok), "--", "sh", "-c", f"{starts} {loop}"]
            with open(out / "workload.out", "w") as stdout:
                ms.run(command, cwd=build, stdout=stdout)
            for inst in instances:
                inst.set("tracing_on", "0")
            print(f"workload done in {time.monotonic() - t0:.1f} s", flush=True)

            shutil.copyfile(text.path / "trace", out / "trace.txt")
            stats = {int(p.name[3:]): (p / "stats").read_text()
                     for p in (text.path / "per_cpu").iterdir()}
            runs = [ms.parse_workload_out(chunk) for chunk in split_runs(
                (out / "workload.out").read_text())]
            # processes.json of the bundle: the last run's processes (maps of every run are kept)
            bundle_info = ms.save_bundle(text, out / "bundle", runs[-1], maps_dir, command, stats)

            state = ms.TopLevelState()
            extracted = build / "extract.dat"
            try:
                ms.run(["trace-cmd", "extract", "-B", dat.name, "-o", str(extracted)],
                       cwd=build, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            finally:
                changed = state.restore()
                if changed:
                    print(f"restored top-level {', '.join(changed)} after trace-cmd extract")
        finally:
            for inst in instances:
                inst.remove()
        ms.run(["trace-cmd", "convert", "-i", str(extracted), "-o", str(out / "trace.dat"),
                "--file-version", "7", "--compression", "zstd"],
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ms.run(["trace-cmd", "convert", "-i", str(extracted), "-o", str(out / "trace-v6.dat"),
                "--file-version", "6", "--compression", "none"],
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(out / "trace-cmd-report.txt", "w") as f:
        ms.run(["trace-cmd", "report", "-i", str(out / "trace.dat")], stdout=f)
    with open(out / "perf-script.txt", "w") as f:
        ms.run(["perf", "script", "--ns", "-i", str(out / "perf.data")], stdout=f,
               stderr=subprocess.DEVNULL)

    (out / "expected.json").write_text(json.dumps(
        {"runs": [ms.expected_numbers(r, f"run {i + 1} of {len(runs)} of the large capture")
                  for i, r in enumerate(runs)]}, indent=1) + "\n")
    counts = {
        "trace.txt": count_events(out / "trace.txt"),
        "trace-cmd-report.txt": count_events(out / "trace-cmd-report.txt") - 1,  # cpus=N line
        "perf-script.txt": count_events(out / "perf-script.txt"),
    }
    sizes = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}
    sizes["bundle/ftrace/cpu*.raw"] = sum(p.stat().st_size
                                          for p in (out / "bundle/ftrace").glob("cpu*.raw"))
    summary = {"events": counts, "bytes": sizes, "lost_events_raw": bundle_info["lost"],
               "perf_refused_events": perf_refused, "workload_args": list(HEAVY_ARGS),
               "runs": len(runs), "kernel": " ".join(os.uname()), "commands": ms.COMMANDS,
               "seconds": round(time.monotonic() - t0, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    for name, size in sizes.items():
        print(f"{size / 1e6:10.1f} MB  {name}")
    for name, n in counts.items():
        print(f"{n:10d} events  {name}")
    if min(counts["trace.txt"], counts["trace-cmd-report.txt"]) < MIN_EVENTS:
        print(f"fewer than {MIN_EVENTS} events: raise --runs", file=sys.stderr)
        return 1
    return 0


def split_runs(text: str) -> list[str]:
    """workload.out of several runs: each run prints child lines, then its own lines."""
    chunks, current = [], []
    for line in text.splitlines():
        if line.startswith("child_pid ") and any(l.startswith("heap_hi ") for l in current):
            chunks.append("\n".join(current))
            current = []
        current.append(line)
    chunks.append("\n".join(current))
    return chunks


if __name__ == "__main__":
    sys.exit(main())
