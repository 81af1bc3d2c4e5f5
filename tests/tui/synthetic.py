"""A small SYNTHETIC session (hand-made events and report, shaped like CONTRACT.md) for the
TUI's edge cases: a hostile comm, a chain that ends in a reset, a snapshot of a KML kernel.
The behaviour on real captures is tested on sample_traces/ in test_real_samples.py."""

from __future__ import annotations

import polars as pl

from kmltrace.schema import conform
from kmltrace.tui.session import Loaded

HOSTILE_COMM = "[bold]x[/x]"
BASE_NS = 1_000_000_000_000       # 1000 s, a plausible uptime


def events(rows: int = 400) -> pl.DataFrame:
    """`rows` events over 2 CPUs: pid 100 (hostile comm) faults, pid 200 syscalls."""
    i = pl.int_range(0, rows, eager=True)
    frame = pl.DataFrame({
        "ts_ns": BASE_NS + i * 10_000,
        "seq": i,
        "cpu": (i % 2).cast(pl.Int32),
        "pid": ((i % 2) * 100 + 100).cast(pl.Int32),
        "source": pl.repeat("ftrace", rows, eager=True),
        "file": pl.repeat("trace.txt", rows, eager=True),
        "line": i + 12,
    })
    frame = frame.with_columns(
        pl.when(pl.col("pid") == 100).then(pl.lit(HOSTILE_COMM)).otherwise(pl.lit("kmlwork"))
        .alias("comm"),
        pl.when(pl.col("pid") == 100).then(pl.lit("page_fault_user"))
        .otherwise(pl.lit("sys_enter")).alias("event"),
        pl.when(pl.col("pid") == 100).then(pl.lit(14)).otherwise(None).cast(pl.Int32)
        .alias("vector"),
        pl.when(pl.col("pid") == 100).then(pl.lit(0x7FFD0000) - pl.col("seq") * 4096)
        .otherwise(None).cast(pl.UInt64).alias("address"),
        pl.format("address=0x{} ip=0x401000 error_code=0x6", pl.col("seq")).alias("raw"),
    )
    return conform(frame)


def report() -> dict:
    chain = [
        {"vector": 14, "name": "#PF", "cpl": 0, "cs": "0x10", "rip": "0x401020",
         "rsp": "0x7ffd0000ff8", "cr2": "0x7ffd0000ff0", "stack": "same", "symbol": "main+0x20",
         "ts_ns": BASE_NS + 3_990_000},
        {"vector": 8, "name": "#DF", "cpl": 0, "cs": "0x10", "rip": "0x401020",
         "rsp": "0xfffffe0000009000", "stack": "ist1", "ts_ns": BASE_NS + 3_990_100},
    ]
    return {
        "inputs": [{"path": "trace.txt", "format": "ftrace_text", "events": 400, "errors": []}],
        "processes": [
            {"pid": 100, "tgid": 100, "comm": HOSTILE_COMM, "exe": "/trusted/[red]w",
             "mode": "kernel", "evidence": ["faults at CPL 0 in /trusted"], "page_faults": 200},
            {"pid": 200, "tgid": 200, "comm": "kmlwork", "exe": "/usr/bin/kmlwork",
             "mode": "user", "evidence": ["syscalls from CPL 3"], "page_faults": 0},
        ],
        "incidents": [
            {"kind": "kernel_mode_process", "severity": "info", "summary": "pid 100 runs in "
             "kernel mode", "pid": 100, "comm": HOSTILE_COMM, "evidence": []},
            {"kind": "triple_fault", "severity": "critical", "cpu": 0, "pid": 100,
             "comm": HOSTILE_COMM, "ts_ns": BASE_NS + 3_990_200,
             "summary": "CPU 0 reset: #PF on the process's own stack, then #DF",
             "explanation": "The #PF gate has IST 0, so the frame was pushed below RSP.",
             "evidence": [{"source": "ftrace", "line": 212, "text": "[bold]x[/x]-100 page_fault"},
                          {"source": "ftrace", "line": 16, "text": "sys_enter"}]},
            {"kind": "fault_storm", "severity": "warning", "pid": 100, "comm": HOSTILE_COMM,
             "ts_ns": BASE_NS, "summary": "200 faults in 4 ms", "evidence": []},
        ],
        "in_flight": [],
        "chains": [chain],
        "chain": chain,
    }


def snapshot() -> dict:
    idt = [{"vector": v, "handler": f"{0xffffffff81000000 + v * 16:#x}", "symbol": f"asm_exc_{v}",
            "selector": "0x10", "type": 14, "dpl": 0, "present": True,
            "ist": {8: 1, 2: 2, 18: 4}.get(v, 0)} for v in range(256)]
    return {
        "kernel": {"release": "5.4.0-kml", "kml": True, "cpus": 1},
        "cpus": [{"cpu": 0, "tss": {"sp0": "0xfffffe0000002000", "sp1": "0x0", "sp2": "0x0",
                                    "ist": ["0xfffffe0000009000", "0xfffffe000000b000", "0x0",
                                            "0xfffffe000000f000", "0x0", "0x0", "0x0"]},
                  "exception_stacks": {}}],
        "idt": idt,
        "tasks": [{"pid": 100, "tgid": 100, "comm": HOSTILE_COMM, "mode": "kernel",
                   "cs": "0x10", "ip": "0x401020", "sp": "0x7ffd0000ff8",
                   "gs_base": "0xffff88807fc00000"}],
        "incidents": [],
    }


def loaded() -> Loaded:
    return Loaded(targets=["synthetic"], events=events(), report=report(),
                  snapshots=[snapshot()])
