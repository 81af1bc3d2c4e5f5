"""Landing stacks and the incidents they imply (SYNTHETIC rows)."""

from kmltrace.report import build_report
from tests.analysis.synthetic import capture, frame, kml_process_rows, mainline_bundle, stack_maps


def kinds(report):
    return sorted(i["kind"] for i in report["incidents"])


def test_kernel_mode_faults_without_ist_clobber_the_red_zone_and_predict_starvation():
    cap = capture(frame(kml_process_rows(gs=False)), processes=[stack_maps()],
                  bundles=[mainline_bundle()])
    report = build_report(cap)
    assert kinds(report) == ["kernel_mode_process", "redzone_clobber", "stack_starvation"]
    starvation = next(i for i in report["incidents"] if i["kind"] == "stack_starvation")
    assert starvation["severity"] == "warning" and starvation["predicted"] is True
    assert starvation["count"] == 3 and starvation["pid"] == 100
    clobber = next(i for i in report["incidents"] if i["kind"] == "redzone_clobber")
    assert clobber["count"] == 3
    assert {"vector": 14, "name": "#PF", "cpl": 0, "stack": "same", "count": 3,
            "not_pushed": 0} in report["stacks"]
    assert {"vector": 14, "name": "#PF", "cpl": 3, "stack": "rsp0", "count": 1,
            "not_pushed": 0} in report["stacks"]


def test_on_a_kml_kernel_the_same_faults_land_on_ist5():
    bundle = mainline_bundle()
    bundle["kernel"] = {"kml": True, "kml_evidence": ["synthetic"]}
    cap = capture(frame(kml_process_rows(gs=False)), processes=[stack_maps()], bundles=[bundle])
    report = build_report(cap)
    assert kinds(report) == ["kernel_mode_process"]
    assert {"vector": 14, "name": "#PF", "cpl": 0, "stack": "ist5", "count": 3,
            "not_pushed": 0} in report["stacks"]


def test_snapshot_idt_without_ist_on_kml_is_ist_missing():
    gates = [{"vector": v, "ist": 0 if v in (14, 236) else 5, "present": True} for v in range(256)]
    snap = {"kernel": {"kml": True, "cpus": 1}, "idt": gates, "tasks": []}
    cap = capture(frame([{"ts_ns": 1, "cpu": 0, "pid": 1, "event": "x"}]), meta={"snapshot": snap})
    report = build_report(cap)
    missing = [i for i in report["incidents"] if i["kind"] == "ist_missing"]
    assert len(missing) == 1 and "#PF" in missing[0]["summary"]
