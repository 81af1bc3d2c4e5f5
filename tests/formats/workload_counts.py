"""The workload capture of sample_traces/host-6.18-workload: its expected.json (numbers the
workload printed itself) and the queries that count them in any parser's event table."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

WORKLOAD = Path(__file__).resolve().parents[2] / "sample_traces" / "host-6.18-workload"


def expected() -> dict:
    return json.loads((WORKLOAD / "expected.json").read_text())


def assert_workload_counts(events: pl.DataFrame) -> None:
    """Exact page faults in the touched ranges, getppid and ARCH_SET_GS calls, per pid."""
    exp = expected()
    pid, child = exp["pid"], exp["child_pid"]
    faults = events.filter(pl.col("event") == "page_fault_user")

    def in_range(task: int, name: str) -> int:
        lo, hi = (int(exp["ranges"][name][k], 16) for k in ("start", "end"))
        return faults.filter(pl.col("pid") == task, pl.col("address") >= lo,
                             pl.col("address") < hi).height

    assert in_range(pid, "stack") == exp["ranges"]["stack"]["pages"]
    assert in_range(pid, "heap") == exp["ranges"]["heap"]["pages"]
    assert in_range(child, "child_heap") == exp["ranges"]["child_heap"]["pages"]

    calls = exp["expect"]["syscalls"]
    # the pid runs sh before it execs kmlwork: count after that exec (expected.json's notes)
    execs = events.filter(pl.col("event") == "sched_process_exec", pl.col("pid") == pid,
                          pl.col("filename").str.ends_with("kmlwork"))
    assert execs.height == 1
    enters = events.filter(pl.col("event") == "sys_enter")
    getppid = enters.filter(pl.col("id") == calls["syscall_nr"])
    assert getppid.filter(pl.col("pid") == pid, pl.col("seq") > execs["seq"][0]).height == \
        exp["M"]
    assert getppid.filter(pl.col("pid") == child).height == exp["K"]
    set_gs = enters.filter(pl.col("pid") == pid, pl.col("id") == calls["arch_prctl_nr"],
                           pl.col("args").list.get(0) == int(calls["arch_prctl_code"], 16))
    assert set_gs.height == 1
