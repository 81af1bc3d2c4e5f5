"""tracefs trace / trace_pipe text: real captures (counts from the workload's own output),
public 4.x excerpts, and synthetic edge cases (labelled as such)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from kmltrace.errors import KmltraceError
from kmltrace.formats import ftrace_text
from kmltrace.formats.sniff import parse_file
from tests.formats.workload_counts import WORKLOAD, assert_workload_counts

SAMPLES = Path(__file__).resolve().parents[2] / "sample_traces"
VARIANTS = SAMPLES / "host-6.18-textvariants"
PUBLIC = SAMPLES / "public-4.x"


@pytest.mark.parametrize("name", ["trace.txt", "trace-noirqinfo.txt", "trace-symaddr.txt",
                                  "trace-symoffset.txt", "trace-tgid.txt", "trace_pipe.txt"])
def test_workload_capture_counts_in_every_tracefs_text_variant(name):
    parsed = parse_file(WORKLOAD / name)
    assert parsed.format == "ftrace_text"
    assert parsed.errors == []
    assert parsed.meta["precision"] == "us"
    assert_workload_counts(parsed.events)


def _workload():
    return json.loads((VARIANTS / "workload.json").read_text())


@pytest.mark.parametrize("name", ["trace.txt", "trace-noirq.txt", "trace-tgid.txt",
                                  "trace-tgid-noirq.txt"])
def test_option_variants_show_the_workloads_exact_counts(name):
    work = _workload()
    parsed = parse_file(VARIANTS / name)
    assert parsed.format == "ftrace_text"
    assert parsed.errors == []
    assert parsed.meta["precision"] == "us"
    mine = parsed.events.filter(pl.col("pid") == work["pid"])
    getppid = mine.filter((pl.col("event") == "sys_enter") & (pl.col("id") == work["getppid_nr"]))
    assert getppid.height == work["getppid_calls"]
    faults = mine.filter(pl.col("event") == "page_fault_user")
    for region in ("heap", "stack"):
        lo, hi = (int(v, 16) for v in work[region])
        assert faults.filter(pl.col("address").is_between(lo, hi)).height == work["pages"], region
    fork = parsed.events.filter(pl.col("event") == "sched_process_fork",
                                pl.col("parent_pid") == work["pid"])
    assert fork["child_pid"].to_list() == [work["child"]]


def test_columns_and_systems():
    parsed = parse_file(VARIANTS / "trace.txt")
    events = parsed.events
    assert events["source"].unique().to_list() == ["ftrace"]
    systems = dict(events.select("event", "system").unique().iter_rows())
    assert systems["page_fault_user"] == "exceptions"
    assert systems["sys_enter"] == "raw_syscalls"
    assert systems["sched_switch"] == "sched"
    assert systems["print"] == "ftrace"
    assert events["seq"].to_list() == list(range(events.height))
    # the two trace_marker writes of capture.sh, as ftrace:print with their text
    marks = events.filter(pl.col("event") == "print")
    assert marks["buf"].to_list() == ["textingest start", "textingest end"]
    assert marks["ip_sym"].unique().to_list() == ["tracing_mark_write"]


def test_tgid_column_and_flags():
    work = _workload()
    tgid = parse_file(VARIANTS / "trace-tgid.txt").events.filter(pl.col("pid") == work["pid"])
    assert tgid["tgid"].unique().to_list() == [work["pid"]]
    plain = parse_file(VARIANTS / "trace.txt").events
    assert plain["flags"].str.len_chars().unique().to_list() == [5]
    assert parse_file(VARIANTS / "trace-noirq.txt").events["flags"].null_count() > 0


def test_timestamp_is_exact_microseconds():
    # the first event line of trace.txt, parsed by hand from its text
    line = next(l for l in (VARIANTS / "trace.txt").read_text().splitlines()
                if not l.startswith("#"))
    stamp = line.split("]", 1)[1].split()[1].rstrip(":")
    seconds, micros = stamp.split(".")
    events = parse_file(VARIANTS / "trace.txt").events
    assert events["ts_ns"][0] == int(seconds) * 10**9 + int(micros) * 1000


def test_trace_pipe_lost_events_match_the_kernels_overrun_count():
    stats = (VARIANTS / "pipe-lost.stats").read_text().split("\n")
    overrun = {int(l.split()[0][3:]): int(l.split()[-1]) for l in stats if l.strip()}
    parsed = parse_file(VARIANTS / "trace_pipe-lost.txt")
    assert parsed.errors == []
    assert parsed.meta["lost_events"] == sum(overrun.values())
    lost = parsed.events.filter(pl.col("event") == "lost_events")
    assert dict(zip(lost["cpu"].to_list(), lost["lost"].to_list())) == overrun
    assert lost["ts_ns"].null_count() == lost.height


def test_page_fault_ip_symbol_or_hex():
    events = parse_file(VARIANTS / "trace.txt").events
    kernel = events.filter(pl.col("event") == "page_fault_kernel")
    assert kernel.height > 0
    assert kernel["ip"].null_count() == kernel.height          # printed as symbols
    assert kernel["ip_sym"].null_count() == 0
    user = events.filter(pl.col("event") == "page_fault_user")
    assert user["ip"].null_count() == 0 and user["ip_sym"].null_count() == user.height


# -- public 4.x excerpts ----------------------------------------------------------------------

def test_android_4x_four_flag_chars_and_hex_args():
    parsed = parse_file(PUBLIC / "android-arm64-4.x-raw_syscalls.txt")
    assert parsed.errors == []
    events = parsed.events
    assert events.height == 13
    assert events["flags"].unique().to_list() == ["...1"]
    assert parsed.meta["cpus"] == 8
    last = events.row(-1, named=True)
    assert (last["comm"], last["pid"], last["event"], last["id"], last["ret"]) == \
        ("adbd", 2165, "sys_exit", 63, -11)
    read = events.filter(pl.col("event") == "sys_enter").row(-1, named=True)
    assert read["args"] == [0x40, 0x7f7e83cd33, 0xffd, 0xFFFFFFFFFFFFFFFF, 1, 0x7f7e801080]


def test_arm_4x_function_tracer_and_stack_traces():
    parsed = parse_file(PUBLIC / "arm32-4.x-function-stacktrace.txt")
    assert parsed.errors == []
    events = parsed.events
    functions = events.filter(pl.col("event") == "function")
    assert functions["ip_sym"].to_list() == ["ext4_file_getattr+0x10/0xbc",
                                             "generic_fillattr+0x10/0x108",
                                             "generic_fillattr+0x10/0x108"]
    assert functions["parent_ip_sym"][0] == "vfs_getattr_nosec+0x68/0x7c"
    assert functions["system"].unique().to_list() == ["ftrace"]
    stacks = events.filter(pl.col("event") == "kernel_stack")
    assert stacks.height == 3
    assert stacks["stack"][0].splitlines()[0] == "=> ext4_file_getattr+0x14/0xbc"
    assert parsed.meta["stack_lines"] == 20


def test_lkml_v58_getppid():
    events = parse_file(PUBLIC / "lkml-v5.8-seccomp-getppid.txt").events
    assert events.filter(pl.col("event") == "sys_enter")["id"].to_list() == [110, 39]
    assert events.filter(pl.col("event") == "sys_exit")["ret"].to_list() == [1304]
    assert events["flags"].to_list() == ["....", ".N..", "...."]


# -- synthetic edge cases (hand-written lines, not captured) ----------------------------------

SYNTHETIC_HOSTILE = (
    "# synthetic: hostile comms\n"
    "          [bold]-101     [000] d.... 10.000001: sys_enter: NR 110 (0, 0, 0, 0, 0, 0)\n"
    "     \x1b[31mred-102     [001] ..... 10.000002: sys_enter: NR 110 (0, 0, 0, 0, 0, 0)\n"
    "      my prog 2-103     [000] ..... 10.000003: sys_exit: NR 110 = 1\n"
    "  a-1 [0] b-2-104     [001] ..... 10.000004: page_fault_user: address=0x1000 ip=0x2000 error_code=0x6\n"
    "        x-9-105 (    105) [000] ..... 10.000005: sys_enter: NR 158 (1001, 7f0000000000, 0, 0, 0, 0)\n"
    "       kworker/u4:1-106   [001] d..1. 10.000006: page_fault_kernel: address=0xdead ip=do_user_addr_fault+0x1f2/0x5c0 error_code=0x0\n"
)


def test_synthetic_hostile_comms_parse_from_the_right(tmp_path):
    path = tmp_path / "hostile.txt"
    path.write_text(SYNTHETIC_HOSTILE)
    parsed = parse_file(path)
    assert parsed.format == "ftrace_text" and parsed.errors == []
    rows = parsed.events.select("comm", "pid", "cpu").rows()
    assert rows == [("[bold]", 101, 0), ("\x1b[31mred", 102, 1), ("my prog 2", 103, 0),
                    ("a-1 [0] b-2", 104, 1), ("x-9", 105, 0), ("kworker/u4:1", 106, 1)]
    ev = parsed.events
    assert ev.filter(pl.col("pid") == 104)["address"].to_list() == [0x1000]
    assert ev.filter(pl.col("pid") == 105)["tgid"].to_list() == [105]
    assert ev.filter(pl.col("pid") == 105)["args"].to_list()[0][0] == 0x1001
    kernel = ev.filter(pl.col("pid") == 106).row(0, named=True)
    assert kernel["ip"] is None and kernel["ip_sym"] == "do_user_addr_fault+0x1f2/0x5c0"


def test_synthetic_bad_lines_are_reported_not_dropped(tmp_path):
    good = "            bash-1     [000] ..... 1.000001: sys_exit: NR 1 = 0\n"
    path = tmp_path / "mixed.txt"
    path.write_text("# tracer: nop\n" + good + "this is not a trace line\n" * 8 + good)
    parsed = parse_file(path)
    assert parsed.events.height == 2
    lines = [e.line for e in parsed.errors]
    assert lines == [3, 4, 5, 6, 7, 8]                  # five one by one, then the count
    assert "3 more lines" in parsed.errors[-1].message
    assert all(isinstance(e, KmltraceError) and e.path == str(path) for e in parsed.errors)


def test_synthetic_truncated_last_line(tmp_path):
    good = "            bash-1     [000] ..... 1.000001: sys_exit: NR 1 = 0\n"
    path = tmp_path / "cut.txt"
    path.write_text(good * 3 + "            bash-1     [000] ..... 1.0000")
    parsed = parse_file(path)
    assert parsed.events.height == 3
    assert [(e.line, "truncated" in e.message) for e in parsed.errors] == [(4, True)]


def test_synthetic_counter_clock_and_nanoseconds(tmp_path):
    path = tmp_path / "clocks.txt"
    path.write_text("            bash-1     [000] ..... 123456789: sys_exit: NR 1 = 0\n")
    parsed = parse_file(path)
    assert parsed.events["ts_ns"].to_list() == [123456789]
    assert parsed.meta["precision"] == "counter"


def test_sniff_rejects_non_traces():
    assert not ftrace_text.sniff(b"")
    assert not ftrace_text.sniff(bytes(range(256)) * 10)
    assert not ftrace_text.sniff(b"Hello world\nthis is prose, not a trace\n")
    assert ftrace_text.sniff(b"# tracer: nop\n#\n")
