#!/usr/bin/env python3
"""Benchmark of the symbol service (key "symbols" of bench/results.json).

Tables:
  vmlinux    a real vmlinux when the Debian test guest is cached
             ($XDG_CACHE_HOME/kmltrace/guest/*/vmlinux, built by tests/system/build_debian_guest.py)
  kallsyms   this machine's /proc/kallsyms (real; as root, else skipped)
  elf150k    an ELF with 150,000 function symbols, assembled with `as` and linked with `ld`
             (bench/work/symbols/, not committed): no vmlinux is on this machine, and the real
             kallsyms has fewer than 150,000 symbols
Measured in one run (median of REPEATS):
  resolve    10 M addresses -> (symbol index, offset): numpy searchsorted (goal: < 2 s)
  lookup     the same with the kernel's text (``name+0xoff/0xsize``) for every address
  load_cold  the ELF's table parsed (cache emptied first)
  load_warm  the ELF's table from the parquet cache (goal: < 0.5 s)
  addr2line  ``addr2line -f -e ELF`` (once) on a subset of the same addresses, against kmltrace on
             that subset; the ratio is per address, and the names are checked equal.

    python3 bench/bench_symbols.py [--addresses 10000000] [--subset 20000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py
from common import save_result, sha256, tool_version  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "bench" / "work" / "symbols"
SYMBOLS = 150_000


def make_elf() -> Path:
    """An ELF with SYMBOLS functions of 16..79 bytes (as + ld: seconds, made once)."""
    out = WORK / "elf150k.elf"
    if out.exists():
        return out
    WORK.mkdir(parents=True, exist_ok=True)
    src = WORK / "elf150k.S"
    with open(src, "w") as f:
        f.write(".text\n")
        for i in range(SYMBOLS):
            f.write(f".globl f{i}\n.type f{i},@function\nf{i}:\n.fill {16 + i % 64},1,0x90\n"
                    f".size f{i},.-f{i}\n")
    subprocess.run(["as", "-o", str(WORK / "elf150k.o"), str(src)], check=True)
    subprocess.run(["ld", "-e", "f0", "-o", str(out), str(WORK / "elf150k.o")], check=True)
    return out


def addresses(table, count: int, seed: int = 1) -> np.ndarray:
    """Like a trace: 90% inside symbols (random symbol, random offset), 10% anywhere in range."""
    rng = np.random.default_rng(seed)
    n_in = count * 9 // 10
    idx = rng.integers(0, len(table.addrs), n_in)
    inside = table.addrs[idx] + (rng.random(n_in) * np.maximum(table.sizes[idx], 1)).astype(np.uint64)
    lo, hi = int(table.addrs[0]), int(table.addrs[-1])
    anywhere = rng.integers(lo, hi, count - n_in, dtype=np.uint64)
    out = np.concatenate([inside, anywhere])
    rng.shuffle(out)
    return out


def median_time(fn, repeats: int, cpu: list | None = None):
    """Median wall seconds (and, into `cpu`, the median CPU seconds of this process: on a
    shared machine the wall time also counts other people's work)."""
    times, cpus, value = [], [], None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        value = fn()
        times.append(time.perf_counter() - start)
        cpus.append(time.process_time() - start_cpu)
    if cpu is not None:
        cpu.append(round(statistics.median(cpus), 3))
    return statistics.median(times), value


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--addresses", type=int, default=10_000_000)
    ap.add_argument("--subset", type=int, default=5_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    vmlinux = sorted((user_cache / "kmltrace" / "guest").glob("*/vmlinux"))
    os.environ["XDG_CACHE_HOME"] = str(WORK / "cache")
    from kmltrace.symbols import cache, readers
    from kmltrace.symbols.service import load_table

    elf = make_elf()
    results: dict = {"machine": f"{platform.node()} {os.cpu_count()} cpus",
                     "loadavg_before": os.getloadavg()[0], "addresses": args.addresses,
                     "tables": {}}
    tables = {"elf150k": (elf, lambda: readers.read_elf(elf))}
    if vmlinux:
        tables["vmlinux"] = (vmlinux[-1], lambda: readers.read_elf(vmlinux[-1]))
    if Path("/proc/kallsyms").exists():
        tables["kallsyms"] = (Path("/proc/kallsyms"), lambda: readers.read_kallsyms("/proc/kallsyms"))
    for name, (path, read) in tables.items():
        try:
            table = read()
        except Exception as e:       # kallsyms hidden without root
            results["tables"][name] = {"skipped": str(e)}
            continue
        q = addresses(table, args.addresses)
        cpu: list = []
        t_resolve, (idx, _) = median_time(lambda: table.resolve(q), args.repeats, cpu)
        t_lookup, frame = median_time(lambda: table.lookup(q), 1, cpu)
        row = {"source": str(path), "symbols": len(table), "resolve_s": round(t_resolve, 3),
               "resolve_cpu_s": cpu[0], "lookup_with_text_s": round(t_lookup, 3),
               "lookup_with_text_cpu_s": cpu[1], "found": int((idx >= 0).sum()),
               "example": frame["sym_text"].drop_nulls()[0]}
        if name in ("elf150k", "vmlinux"):
            row["input_sha256"] = sha256(path)
            row["build_id"] = table.meta.get("build_id")
            shutil.rmtree(cache.cache_dir(), ignore_errors=True)
            cpu = []
            cold, _ = median_time(lambda: (shutil.rmtree(cache.cache_dir(), ignore_errors=True),
                                           load_table(path)), args.repeats, cpu)
            load_table(path)
            warm, _ = median_time(lambda: load_table(path), args.repeats, cpu)
            row.update(load_cold_s=round(cold, 3), load_cold_cpu_s=cpu[0],
                       load_warm_s=round(warm, 3), load_warm_cpu_s=cpu[1])
            if name == "elf150k":
                row["addr2line"] = compare_addr2line(table, path, q[:args.subset], args.repeats)
        results["tables"][name] = row
    results["loadavg_after"] = os.getloadavg()[0]
    results["versions"] = versions()
    save_result("symbols", results)
    print(json.dumps(results, indent=2))
    return 0


def compare_addr2line(table, path: Path, subset: np.ndarray, repeats: int) -> dict:
    tool = shutil.which("addr2line")
    if tool is None:
        return {"skipped": "no addr2line"}
    argv = [tool, "-f", "-e", str(path), *[f"{int(a):#x}" for a in subset]]
    t_tool, out = median_time(lambda: subprocess.run(argv, capture_output=True, text=True,
                                                     check=True).stdout, 1)
    t_ours, frame = median_time(lambda: table.lookup(subset), repeats)
    theirs = out.splitlines()[0::2]
    ours = [s if s is not None else "??" for s in frame["symbol"].to_list()]
    agree = sum(a == b for a, b in zip(ours, theirs))
    return {"addresses": len(subset), "addr2line_s": round(t_tool, 3), "kmltrace_s": round(t_ours, 4),
            "ratio_addr2line_over_kmltrace": round(t_tool / max(t_ours, 1e-9), 1),
            "names_equal": agree}


def versions() -> dict:
    import polars
    out = {"python": sys.version.split()[0], "numpy": np.__version__, "polars": polars.__version__}
    for tool in ("addr2line", "as"):
        out[tool] = tool_version([tool, "--version"])
    return out


if __name__ == "__main__":
    sys.exit(main())
