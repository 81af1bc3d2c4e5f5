"""Process modes from evidence, one row per exec image (SYNTHETIC rows)."""

import polars as pl

from kmltrace.analysis.context import Context
from kmltrace.analysis.modes import process_modes
from tests.analysis.synthetic import capture, frame, kml_process_rows, mainline_bundle, stack_maps


def modes(cap):
    ctx = Context.build(cap)
    return process_modes(ctx)


def test_kml_fault_signature_after_exec_makes_a_kernel_row_and_the_pre_exec_image_stays_user():
    cap = capture(frame(kml_process_rows()), processes=[stack_maps()], bundles=[mainline_bundle()])
    rows = modes(cap).filter(pl.col("pid") == 100).sort("image")
    assert rows.get_column("mode").to_list() == ["user", "kernel"]
    kernel = rows.row(1, named=True)
    assert kernel["exe"] == "/trusted/prog"
    assert kernel["kml_faults"] == 3
    assert any("U/S bit clear" in e for e in kernel["evidence"])


def test_the_same_process_with_u_bit_set_is_user_everywhere():
    cap = capture(frame(kml_process_rows(u_clear=False, exe="/usr/bin/prog")),
                  bundles=[mainline_bundle()])
    assert set(modes(cap).get_column("mode").to_list()) == {"user"}


def test_trusted_path_on_a_kernel_known_not_to_be_kml_is_not_kernel_mode():
    cap = capture(frame(kml_process_rows(u_clear=False)), bundles=[mainline_bundle()])
    assert "kernel" not in modes(cap).get_column("mode").to_list()


def test_snapshot_cs_marker_makes_kernel_mode_and_0x33_user():
    snap = {"kernel": {"kml": True}, "tasks": [
        {"pid": 7, "comm": "k", "cs": "0x7fff0013"}, {"pid": 8, "comm": "u", "cs": "0x33"}]}
    cap = capture(frame([{"ts_ns": 1, "cpu": 0, "pid": 1, "event": "x"}]), meta={"snapshot": snap})
    out = modes(cap)
    mode = dict(zip(out.get_column("pid").to_list(), out.get_column("mode").to_list()))
    assert mode[7] == "kernel" and mode[8] == "user"


def test_kthreads_from_evidence_not_from_the_name():
    rows = frame([
        {"ts_ns": 1, "cpu": 0, "pid": 2, "comm": "kthreadd", "event": "sched_process_fork",
         "parent_pid": 2, "child_pid": 77, "child_comm": "kthreadd"},
        {"ts_ns": 2, "cpu": 0, "pid": 77, "comm": "worker", "event": "sched_switch",
         "prev_pid": 77, "next_pid": 0, "next_comm": "swapper/0"},
        # a user process that calls itself kworker: its syscalls make it user
        {"ts_ns": 3, "cpu": 1, "pid": 500, "comm": "kworker/0:1", "event": "sys_enter", "id": 0},
    ])
    out = modes(capture(rows))
    mode = dict(zip(out.get_column("pid").to_list(), out.get_column("mode").to_list()))
    assert mode[2] == "kthread"      # pid 2 is kthreadd
    assert mode[77] == "kthread"     # forked by kthreadd
    assert mode[0] == "kthread"      # the idle task, seen only as next_pid
    assert mode[500] == "user"


def test_a_process_without_evidence_is_unknown():
    rows = frame([{"ts_ns": 1, "cpu": 0, "pid": 321, "comm": "quiet", "event": "sched_switch",
                   "prev_pid": 321, "next_pid": 0, "next_comm": "swapper/0"}])
    out = modes(capture(rows)).filter(pl.col("pid") == 321)
    assert out.get_column("mode").to_list() == ["unknown"]


def test_a_kernel_thread_name_alone_is_no_evidence():
    # a task named like a kernel thread, quiet in the capture: the name says nothing
    rows = frame([{"ts_ns": 1, "cpu": 0, "pid": 41, "comm": "kworker/u8:2", "event": "sched_switch",
                   "prev_pid": 41, "next_pid": 0, "next_comm": "swapper/0"}])
    row = modes(capture(rows)).filter(pl.col("pid") == 41).row(0, named=True)
    assert row["mode"] == "unknown"
    assert "no evidence" in row["evidence"][0]


def test_a_child_of_a_kernel_thread_is_a_kernel_thread():
    rows = frame([
        {"ts_ns": 1, "cpu": 0, "pid": 2, "comm": "kthreadd", "event": "sched_process_fork",
         "parent_pid": 2, "child_pid": 77, "child_comm": "kthreadd"},
        {"ts_ns": 2, "cpu": 0, "pid": 77, "comm": "worker", "event": "sched_process_fork",
         "parent_pid": 77, "child_pid": 78, "child_comm": "worker"},
        # forked by a process that is no kernel thread: still unknown
        {"ts_ns": 3, "cpu": 1, "pid": 300, "comm": "sh", "event": "sched_process_fork",
         "parent_pid": 300, "child_pid": 301, "child_comm": "kworker/9:9"},
        {"ts_ns": 4, "cpu": 0, "pid": 78, "comm": "worker", "event": "sched_switch",
         "prev_pid": 78, "next_pid": 301, "next_comm": "kworker/9:9"},
    ])
    out = modes(capture(rows))
    mode = dict(zip(out.get_column("pid").to_list(), out.get_column("mode").to_list()))
    assert mode[78] == "kthread"
    assert mode[301] == "unknown"
