"""SYNTHETIC event tables for unit tests of the analyses: hand-built rows (schema.conform'ed),
each test states the numbers it builds in. Real captures are tested in test_real_captures.py."""

from __future__ import annotations

import polars as pl

from kmltrace.capture import Capture
from kmltrace.formats import Parsed
from kmltrace.schema import conform

US = 1000


def frame(rows: list[dict], source: str = "ftrace", file: str = "synthetic.txt") -> pl.DataFrame:
    """Rows with defaults: seq in order, line = seq + 1, source and file filled."""
    full = []
    for i, row in enumerate(rows):
        full.append({"seq": i, "line": i + 1, "source": source, "file": file, **row})
    schema_overrides = {"args": pl.List(pl.UInt64), "ip": pl.UInt64, "address": pl.UInt64,
                        "error_code": pl.UInt64, "rsp": pl.UInt64}
    df = pl.DataFrame(full, schema_overrides={k: v for k, v in schema_overrides.items()
                                              if any(k in r for r in full)},
                      infer_schema_length=None)
    return conform(df)


def capture(*frames: pl.DataFrame, processes=None, bundles=None, meta=None) -> Capture:
    inputs = [Parsed(path=f.get_column("file")[0] if f.height else "empty", format="synthetic",
                     events=f, meta=dict(meta or {})) for f in frames]
    return Capture(inputs=inputs, processes=list(processes or []), bundles=list(bundles or []))


def mainline_bundle(cpus: int = 2) -> dict:
    return {"path": "synthetic-bundle", "kind": "collect",
            "kernel": {"release": "6.18-synthetic", "kml": False, "kml_evidence": []},
            "captured": {"cpus": cpus}}


def kml_process_rows(pid=100, stack_pages=(0x7ffd0000, 0x7ffcf000, 0x7ffce000), u_clear=True,
                     exe="/trusted/prog", gs=True, t0=1_000_000):
    """A fork child that execs `exe`, faults on three stack pages (U/S clear when `u_clear`)
    and calls arch_prctl(ARCH_SET_GS, 0) once. Before the exec it takes one normal fault."""
    ec = 0x2 if u_clear else 0x6
    rows = [
        {"ts_ns": t0, "cpu": 0, "pid": pid, "comm": "prog", "event": "page_fault_user",
         "system": "exceptions", "address": 0x55550000, "ip": 0x7f0000001000, "error_code": 0x6},
        {"ts_ns": t0 + 10 * US, "cpu": 0, "pid": pid, "comm": "prog",
         "event": "sched_process_exec", "system": "sched", "filename": exe},
    ]
    for i, page in enumerate(stack_pages):
        rows.append({"ts_ns": t0 + (20 + i) * US, "cpu": 0, "pid": pid, "comm": "prog",
                     "event": "page_fault_user", "system": "exceptions",
                     "address": page + 0xff8, "ip": 0x401000, "error_code": ec})
    if gs:
        rows.append({"ts_ns": t0 + 40 * US, "cpu": 0, "pid": pid, "comm": "prog",
                     "event": "sys_enter", "system": "raw_syscalls", "id": 158,
                     "args": [0x1001, 0, 0, 0, 0, 0]})
        rows.append({"ts_ns": t0 + 41 * US, "cpu": 0, "pid": pid, "comm": "prog",
                     "event": "sys_exit", "system": "raw_syscalls", "id": 158, "ret": 0})
    return rows


def stack_maps(pid=100, lo=0x7ffc0000, hi=0x7ffe0000, exe="/trusted/prog"):
    return {"pid": pid, "tgid": pid, "comm": "prog", "exe": exe,
            "maps": [{"start": hex(0x400000), "end": hex(0x402000), "perms": "r-xp", "path": exe},
                     {"start": hex(0x55550000), "end": hex(0x55560000), "perms": "rw-p",
                      "path": "[heap]"},
                     {"start": hex(lo), "end": hex(hi), "perms": "rw-p", "path": "[stack]"}]}
