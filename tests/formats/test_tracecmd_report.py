"""`trace-cmd report` text of the real workload capture (plain and -R), and synthetic
header/loss lines."""

from __future__ import annotations

import polars as pl
import pytest

from kmltrace.formats import tracecmd_report
from kmltrace.formats.sniff import parse_file
from tests.formats.workload_counts import WORKLOAD, assert_workload_counts, expected


@pytest.mark.parametrize("name", ["trace-cmd-report.txt", "trace-cmd-report-R.txt"])
def test_workload_counts(name):
    parsed = parse_file(WORKLOAD / name)
    assert parsed.format == "tracecmd_report"
    assert parsed.errors == []
    assert parsed.meta["precision"] == "us"
    assert parsed.meta["cpus"] == 2
    assert_workload_counts(parsed.events)


@pytest.mark.parametrize("name", ["trace-cmd-report.txt", "trace-cmd-report-R.txt"])
def test_markers_and_the_instance_prefix(name):
    exp = expected()
    parsed = parse_file(WORKLOAD / name)
    events = parsed.events
    # lines carry the instance buffer name: it is not part of the comm
    assert len(parsed.meta["buffers"]) == 1
    assert "kmlwork" in set(events.filter(pl.col("pid") == exp["pid"])["comm"])
    assert not events["comm"].str.contains(parsed.meta["buffers"][0]).any()
    marks = events.filter(pl.col("event") == "print")
    want = exp["expect"]["markers"]
    assert marks.filter(pl.col("pid") == exp["pid"]).height == \
        want["ftrace:print (trace_marker) lines from pid"]
    assert marks.filter(pl.col("pid") == exp["child_pid"]).height == \
        want["ftrace:print (trace_marker) lines from child_pid"]
    assert marks["buf"].str.starts_with("kmlwork").all()
    assert marks["system"].unique().to_list() == ["ftrace"]


def test_raw_and_printed_fields_agree():
    printed = parse_file(WORKLOAD / "trace-cmd-report.txt").events
    raw = parse_file(WORKLOAD / "trace-cmd-report-R.txt").events
    columns = ["ts_ns", "pid", "cpu", "event", "id", "ret", "args", "address", "vector",
               "next_pid", "child_pid"]
    assert printed.select(columns).equals(raw.select(columns))


SYNTHETIC = (  # synthetic: header of a version 6 file, a dropped-events line, no instance
    "version = 6\n"
    "cpus=4\n"
    "            bash-6224  [002]   343.291439: sys_enter:            NR 110 (0, 0, 0, 0, 0, 0)\n"
    "CPU:2 [12 EVENTS DROPPED]\n"
    "          <idle>-0     [003] d..2.   343.291440: sched_switch:         prev_comm=swapper/3 "
    "prev_pid=0 prev_prio=120 prev_state=R ==> next_comm=bash next_pid=6224 next_prio=120\n"
)


def test_synthetic_version_header_and_dropped_events(tmp_path):
    path = tmp_path / "report.txt"
    path.write_text(SYNTHETIC)
    assert tracecmd_report.sniff(path.read_bytes())
    parsed = parse_file(path)
    assert parsed.format == "tracecmd_report" and parsed.errors == []
    assert parsed.meta["cpus"] == 4 and parsed.meta["trace_dat_version"] == 6
    assert parsed.meta["lost_events"] == 12
    assert parsed.events["event"].to_list() == ["sys_enter", "lost_events", "sched_switch"]
    switch = parsed.events.row(2, named=True)
    assert (switch["comm"], switch["flags"], switch["next_pid"]) == ("<idle>", "d..2.", 6224)


def test_synthetic_buffer_first_seen_after_the_head(tmp_path):
    # synthetic: the top-level buffer's lines fill the head, an instance appears later
    top = "            bash-6224  [000]   343.291439: sys_exit:             NR 1 = 0\n"
    late = ("kml-late:              wl-77    [001]   344.000001: sys_enter:            "
            "NR 110 (0, 0, 0, 0, 0, 0)\n")
    path = tmp_path / "report.txt"
    path.write_text("cpus=2\n" + top * 2000 + late)
    parsed = parse_file(path)
    assert parsed.errors == [] and parsed.meta["buffers"] == ["kml-late"]
    row = parsed.events.row(-1, named=True)
    assert (row["comm"], row["pid"], row["id"]) == ("wl", 77, 110)
