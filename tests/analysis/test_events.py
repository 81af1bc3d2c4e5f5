"""merged_events: order, attribution, duplicates of one run counted once (SYNTHETIC rows)."""

import polars as pl

from kmltrace.analysis.events import merge_notes, merged_events
from tests.analysis.synthetic import US, capture, frame


def test_timed_rows_sorted_and_untimed_rows_follow_in_seq_order():
    timed = frame([{"ts_ns": 30, "cpu": 0, "pid": 1, "event": "b"},
                   {"ts_ns": 10, "cpu": 0, "pid": 1, "event": "a"}])
    qemu = frame([{"cpu": 0, "event": "exception", "vector": 14},
                  {"cpu": 0, "event": "exception", "vector": 8}], source="qemu", file="q.log")
    out = merged_events(capture(qemu, timed)).collect()
    assert out.get_column("event").to_list() == ["a", "b", "exception", "exception"]
    assert out.get_column("vector").to_list()[2:] == [14, 8]
    assert out.get_column("row").to_list() == [0, 1, 2, 3]


def test_event_without_pid_is_attributed_to_the_task_switched_in_on_its_cpu():
    rows = frame([
        {"ts_ns": 100, "cpu": 1, "pid": 5, "comm": "a", "event": "sched_switch",
         "prev_pid": 5, "next_pid": 42, "next_comm": "victim"},
        {"ts_ns": 200, "cpu": 0, "pid": 7, "comm": "other", "event": "x"},
        {"ts_ns": 300, "cpu": 1, "event": "kvm_exit"},          # no pid in the record
    ])
    out = merged_events(capture(rows)).collect()
    last = out.filter(pl.col("event") == "kvm_exit").row(0, named=True)
    assert (last["task_pid"], last["task_comm"]) == (42, "victim")
    switch = out.filter(pl.col("event") == "sched_switch").row(0, named=True)
    assert switch["task_pid"] == 5     # the switch itself belongs to the task leaving


def test_exec_starts_a_new_image():
    rows = frame([{"ts_ns": 1, "cpu": 0, "pid": 9, "event": "a"},
                  {"ts_ns": 2, "cpu": 0, "pid": 9, "event": "sched_process_exec"},
                  {"ts_ns": 3, "cpu": 0, "pid": 9, "event": "b"}])
    out = merged_events(capture(rows)).collect()
    assert out.get_column("image").to_list() == [0, 1, 1]


def _run(source, file, offset, n=50):
    """One run seen by two tools: 50 faults 7 us apart, a fork and an exec as anchors;
    `offset` models perf's clock differing from the trace clock."""
    rows = [{"ts_ns": offset + 1000 * US, "cpu": 0, "pid": 3, "event": "sched_process_exec"},
            {"ts_ns": offset + 1001 * US, "cpu": 0, "pid": 3, "event": "sched_process_fork",
             "child_pid": 4}]
    rows += [{"ts_ns": offset + (1002 + 7 * i) * US, "cpu": 0, "pid": 3,
              "event": "page_fault_user", "address": 0x1000 * i} for i in range(n)]
    return frame(rows, source=source, file=file)


def test_ftrace_and_perf_of_one_run_are_counted_once_even_with_another_clock():
    ftrace = _run("ftrace", "trace.txt", 0)
    perf = _run("perf", "perf.txt", -29_700 * US)   # perf's clock 29.7 ms behind
    # perf also saw 3 events before the trace started
    early = frame([{"ts_ns": -29_700 * US + i * US, "cpu": 0, "pid": 3, "event": "sys_enter",
                    "id": 12} for i in range(3)], source="perf", file="perf.txt")
    perf = pl.concat([early, perf], how="diagonal_relaxed")
    cap = capture(perf, ftrace)
    out = merged_events(cap).collect()
    assert out.filter(pl.col("event") == "page_fault_user").height == 50
    assert out.filter(pl.col("event") == "sys_enter").height == 3   # only perf had them
    notes = [n.to_json() for n in merge_notes(cap)]
    assert len(notes) == 1
    assert notes[0]["counted_source"] == "ftrace" and notes[0]["dropped_source"] == "perf"
    assert notes[0]["duplicates"] == 52
    assert notes[0]["clock_offset_ns"] == 29_700 * US


def test_two_different_runs_are_not_deduplicated():
    a = _run("ftrace", "a.txt", 0)
    b = frame([{"ts_ns": 10**12, "cpu": 0, "pid": 3, "event": "page_fault_user"}],
              source="perf", file="b.txt")
    out = merged_events(capture(a, b)).collect()
    assert out.height == 53
    assert merge_notes(capture(a, b)) == []
