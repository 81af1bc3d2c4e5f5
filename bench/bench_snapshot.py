#!/usr/bin/env python3
"""Benchmark of ``kmltrace snapshot`` on a 128 MB guest dump (key "snapshot" of bench/results.json).

Input: the dump of Debian's current cloud kernel booted under QEMU TCG with 128 MB and 2 vCPUs
(built and cached by tests/system/build_debian_guest.py, booted and dumped here if missing),
with the slimmed DWARF vmlinux of its -dbg package.  Measured in the same run, each the median
of REPEATS, every one in a fresh child process (drgn's debug-info load included):

  drgn_floor      python -m drgn -c vmcore -s vmlinux -e pass: drgn opening the dump and
                  indexing the vmlinux, nothing read (the floor for any drgn tool)
  guest_memory    the vmcore format parser (IDT and TSS from IDTR/TR, no drgn, no tasks)
  snapshot_cli    kmltrace snapshot --vmcore --vmlinux --json, end to end. Goal: < 5 s.
  snapshot_cli_no_dwarf   the same without --vmlinux: kallsyms and the kernel's BTF

    python3 bench/bench_snapshot.py [--repeats 3]
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


def timed(argv: list[str], repeats: int) -> tuple[float, str]:
    times, out = [], ""
    for _ in range(repeats):
        start = time.perf_counter()
        result = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        times.append(time.perf_counter() - start)
        if result.returncode:
            raise SystemExit(f"{argv[:4]} failed: {result.stderr[-500:]}")
        out = result.stdout
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "src"))
    import drgn

    from tests.system import build_debian_guest as fixture

    guest = fixture.build(log=lambda m: print(m, file=sys.stderr))
    vmcore = fixture.ensure_vmcore(guest)
    vmlinux = guest.vmlinux
    py = sys.executable
    floor_s, _ = timed([py, "-m", "drgn", "-q", "-c", str(vmcore), "-s", str(vmlinux),
                        "--no-default-symbols", "-e", "pass"], args.repeats)
    memory_s, _ = timed([py, "-c", "import sys; from pathlib import Path; "
                         "from kmltrace.formats import guest_memory as g; "
                         "p = g.parse(Path(sys.argv[1])); assert not p.errors, p.errors",
                         str(vmcore)], args.repeats)
    snap_s, out = timed([py, "-m", "kmltrace", "snapshot", "--vmcore", str(vmcore),
                         "--vmlinux", str(vmlinux), "--json"], args.repeats)
    snap = json.loads(out)
    bare_s, bare_out = timed([py, "-m", "kmltrace", "snapshot", "--vmcore", str(vmcore), "--json"],
                             args.repeats)
    bare = json.loads(bare_out)
    modes: dict[str, int] = {}
    for task in snap["tasks"]:
        modes[task["mode"]] = modes.get(task["mode"], 0) + 1

    result = {
        "command": f"python3 bench/bench_snapshot.py --repeats {args.repeats}",
        "input": {"vmcore": {"bytes": vmcore.stat().st_size, "sha256": sha256(vmcore)},
                  "vmlinux": {"bytes": vmlinux.stat().st_size, "sha256": sha256(vmlinux)},
                  "kernel": guest.release, "guest": f"QEMU TCG -m {fixture.GUEST_MEMORY} "
                  f"-smp {fixture.GUEST_CPUS}, made by tests/system/build_debian_guest.py"},
        "seconds": {"drgn_floor": round(floor_s, 3), "guest_memory_parse": round(memory_s, 3),
                    "snapshot_cli": round(snap_s, 3),
                    "snapshot_cli_no_dwarf": round(bare_s, 3)},
        "goal": "snapshot of the 128 MB guest dump, debug-info load included, < 5 s",
        "goal_met": snap_s < 5.0,
        "records": {"gates": len(snap["idt"]), "cpus": len(snap["cpus"]), "tasks": modes,
                    "incidents": len(snap["incidents"]),
                    "no_dwarf_tasks": len(bare["tasks"])},
        "versions": {"python": platform.python_version(), "drgn": drgn.__version__,
                     "qemu": tool_version(["qemu-system-x86_64", "--version"])},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_1min": round(os.getloadavg()[0], 2)},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    save_result("snapshot", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
