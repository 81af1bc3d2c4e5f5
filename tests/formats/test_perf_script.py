"""`perf script` text of the real workload capture: default, --ns, and -F with pid/tid."""

from __future__ import annotations

import polars as pl
import pytest

from kmltrace.formats import perf_script
from kmltrace.formats.sniff import parse_file
from tests.formats.workload_counts import WORKLOAD, assert_workload_counts, expected


@pytest.mark.parametrize("name,precision", [("perf-script.txt", "us"),
                                            ("perf-script-ns.txt", "ns"),
                                            ("perf-script-F.txt", "ns")])
def test_workload_counts(name, precision):
    parsed = parse_file(WORKLOAD / name)
    assert parsed.format == "perf_script"
    assert parsed.errors == []
    assert parsed.meta["precision"] == precision
    assert parsed.events["source"].unique().to_list() == ["perf"]
    assert_workload_counts(parsed.events)


def test_systems_come_from_the_event_names():
    events = parse_file(WORKLOAD / "perf-script.txt").events
    pairs = dict(events.select("event", "system").unique().iter_rows())
    assert pairs["page_fault_user"] == "exceptions" and pairs["sys_enter"] == "raw_syscalls"
    assert events.filter(pl.col("event") == "page_fault_kernel")["ip_sym"].null_count() == 0


def test_ns_timestamps_are_exact_and_agree_with_microseconds():
    us = parse_file(WORKLOAD / "perf-script.txt").events
    ns = parse_file(WORKLOAD / "perf-script-ns.txt").events
    # the first line's --ns stamp, split by hand from the text
    first = (WORKLOAD / "perf-script-ns.txt").read_text().splitlines()[0]
    seconds, frac = first.split("]", 1)[1].split()[0].rstrip(":").split(".")
    assert ns["ts_ns"][0] == int(seconds) * 10**9 + int(frac)
    assert ((ns["ts_ns"] // 1000) == (us["ts_ns"] // 1000)).all()


def test_pid_slash_tid_gives_tgid():
    exp = expected()
    events = parse_file(WORKLOAD / "perf-script-F.txt").events
    child = events.filter(pl.col("pid") == exp["child_pid"])
    assert child["tgid"].unique().to_list() == [exp["child_pid"]]


SYNTHETIC = (  # synthetic: comm with spaces and digits, a sample without fields, a callchain
    "   my prog 7  4242 [001]  10.000001:  raw_syscalls:sys_enter: NR 110 (0, 0, 0, 0, 0, 0)\n"
    "        bash   17 [000]  10.000002:  sched:sched_foo:\n"
    "\tffffffff8106f2b1 do_user_addr_fault+0x1f2 ([kernel.kallsyms])\n"
    "\tffffffff81c0a8a7 exc_page_fault+0x77 ([kernel.kallsyms])\n"
    "\n"
)


def test_synthetic_edge_lines(tmp_path):
    path = tmp_path / "perf.txt"
    path.write_text(SYNTHETIC)
    assert perf_script.sniff(path.read_bytes())
    parsed = parse_file(path)
    assert parsed.errors == []
    rows = parsed.events.select("comm", "pid", "cpu", "system", "event").rows()
    assert rows == [("my prog 7", 4242, 1, "raw_syscalls", "sys_enter"),
                    ("bash", 17, 0, "sched", "sched_foo")]
    assert parsed.events["stack"][1].splitlines()[0].startswith("ffffffff8106f2b1")
