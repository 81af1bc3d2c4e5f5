"""gs_write, fault_loop, fault_storm and in_flight (SYNTHETIC rows)."""

from kmltrace.report import build_report
from tests.analysis.synthetic import US, capture, frame, kml_process_rows, mainline_bundle


def incidents(report, kind):
    return [i for i in report["incidents"] if i["kind"] == kind]


def test_gs_write_by_kernel_mode_process_is_an_error_on_smp_and_a_warning_on_up():
    for cpus, severity in ((2, "error"), (1, "warning")):
        cap = capture(frame(kml_process_rows()), bundles=[mainline_bundle(cpus)])
        found = incidents(build_report(cap), "gs_write")
        assert [(i["severity"], i["pid"], i["count"]) for i in found] == [(severity, 100, 1)]


def test_gs_write_by_user_mode_process_is_fine():
    cap = capture(frame(kml_process_rows(u_clear=False, exe="/usr/bin/x")),
                  bundles=[mainline_bundle()])
    assert incidents(build_report(cap), "gs_write") == []


def _fault(ts, **kw):
    return {"ts_ns": ts, "cpu": 0, "pid": 5, "comm": "w", "event": "page_fault_user",
            "system": "exceptions", "ip": 0x401000, "address": 0x7ffd0ff8, "error_code": 6, **kw}


def test_fault_loop_needs_identical_faults_with_nothing_in_between():
    rows = [_fault(i * US) for i in range(40)]
    # a timer interrupt in the middle is not progress
    rows.insert(20, {"ts_ns": 19 * US + 500, "cpu": 0, "pid": 5, "event": "local_timer_entry",
                     "system": "irq_vectors", "vector": 236})
    found = incidents(build_report(capture(frame(rows))), "fault_loop")
    assert [(i["repeats"], i["severity"], i["cpu"]) for i in found] == [(40, "critical", 0)]


def test_a_retry_that_makes_progress_is_not_a_loop():
    rows = []
    for i in range(40):
        rows.append(_fault(2 * i * US))
        rows.append({"ts_ns": (2 * i + 1) * US, "cpu": 0, "pid": 5, "event": "sys_enter", "id": 0})
    assert incidents(build_report(capture(frame(rows))), "fault_loop") == []
    moving = [_fault(i * US, address=0x7ffd0000 - 0x1000 * i) for i in range(40)]
    assert incidents(build_report(capture(frame(moving))), "fault_loop") == []


def test_qemu_exception_records_loop_too():
    rows = [{"cpu": 0, "event": "exception", "vector": 14, "cpl": 0, "ip": 0x100111,
             "cr2": 0x40000ff8, "error_code": 2, "rsp": 0x40001000} for _ in range(33)]
    found = incidents(build_report(capture(frame(rows, source="qemu", file="q.log"))), "fault_loop")
    assert len(found) == 1 and found[0]["repeats"] == 33 and found[0]["cpu"] == 0


def test_fault_storm_against_the_process_baseline():
    window = 100_000_000
    rows = []
    for w in range(10):        # 10 windows of 5 faults, then one window of 2000
        rows += [_fault(w * window + i * 1000, address=0x1000 * i) for i in range(5)]
    rows += [_fault(10 * window + i * 1000, address=0x100000 + 0x1000 * i) for i in range(2000)]
    found = incidents(build_report(capture(frame(rows))), "fault_storm")
    assert [(i["pid"], i["peak"]) for i in found] == [(5, 2000)]
    calm = [_fault(w * window + i * 1000, address=0x1000 * i) for w in range(10) for i in range(5)]
    assert incidents(build_report(capture(frame(calm))), "fault_storm") == []


def test_in_flight_lists_the_unfinished_syscall_and_interrupt():
    rows = [
        {"ts_ns": 1, "cpu": 0, "pid": 5, "event": "sys_enter", "id": 1},
        {"ts_ns": 2, "cpu": 0, "pid": 5, "event": "sys_exit", "id": 1},
        {"ts_ns": 3, "cpu": 0, "pid": 5, "event": "sys_enter", "id": 61},
        {"ts_ns": 4, "cpu": 1, "pid": 6, "event": "local_timer_entry", "system": "irq_vectors",
         "vector": 236},
    ]
    flight = build_report(capture(frame(rows)))["in_flight"]
    assert {"cpu": 0, "pid": 5, "what": "sys_enter id=61", "ts_ns": 3} in flight
    assert {"cpu": 1, "pid": 6, "what": "local_timer_entry", "ts_ns": 4} in flight


def test_missing_events_are_named():
    report = build_report(capture(frame([_fault(1)])))
    gs = next(a for a in report["analyses"] if a["name"] == "gs_write")
    assert gs["ran"] is False and gs["missing"] == ["sys_enter"]


def test_fault_loop_on_one_cpu_is_found_while_another_cpu_works():
    rows = []
    for i in range(40):
        rows.append(_fault(2 * i * US))
        rows.append({"ts_ns": 2 * i * US + 500, "cpu": 1, "pid": 6, "event": "sys_enter", "id": 0})
    found = incidents(build_report(capture(frame(rows))), "fault_loop")
    assert [(i["repeats"], i["cpu"]) for i in found] == [(40, 0)]


def test_exited_tasks_are_not_left_in_a_syscall():
    """exit_group never returns: a real workload whose child exited must not show the child's
    last sys_enter as in flight (pids from the workload's own output)."""
    import json

    from kmltrace.capture import load
    from tests.conftest import SAMPLES

    sample = SAMPLES / "host-6.18-workload"
    expected = json.loads((sample / "expected.json").read_text())
    report = build_report(load([sample / "trace.txt"]))
    stuck = [f for f in report["in_flight"] if f["what"].startswith("sys_enter")]
    assert expected["child_pid"] not in {f["pid"] for f in stuck}
    # both workload processes exited before the capture ended: neither is in a syscall
    assert expected["pid"] not in {f["pid"] for f in stuck}
