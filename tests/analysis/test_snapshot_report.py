"""The report takes a snapshot TARGET's per-task incidents (SYNTHETIC KML snapshot, built from
the brief's facts as in tests/collectors/test_snapshot_checks.py), each kind once."""

from __future__ import annotations

import json

from kmltrace.capture import load
from kmltrace.report import build_report
from tests.collectors.test_snapshot_checks import KML_IST, kernel_task, snapshot, task


def test_report_has_each_snapshot_incident_once(tmp_path):
    snap = snapshot(layout={**KML_IST, 14: 0},
                    tasks=[kernel_task(sp_mapped_below=100, gs_base="0x0"),
                           task(300, "user", cs="0x33", sp="0x7ffd0010000")])
    path = tmp_path / "snap.json"
    path.write_text(json.dumps(snap))
    report = build_report(load([path]))
    kinds = sorted(i["kind"] for i in report["incidents"])
    assert kinds == ["gs_write", "ist_missing", "kernel_mode_process", "stack_starvation"]
    by_kind = {i["kind"]: i for i in report["incidents"]}
    assert by_kind["stack_starvation"]["severity"] == "warning"
    assert by_kind["stack_starvation"]["pid"] == 100
    assert by_kind["gs_write"]["severity"] == "error"     # two CPUs
    modes = {p["pid"]: p["mode"] for p in report["processes"]}
    assert modes == {100: "kernel", 300: "user"}


def test_mainline_snapshot_gives_no_incident(tmp_path):
    snap = snapshot(kml=False, layout={8: 1, 2: 2, 1: 3, 18: 4, 29: 5},
                    tasks=[task(300, "user", cs="0x33", sp="0x7ffd0010000", gs_base="0x0",
                                sp_mapped_below=0)])
    path = tmp_path / "snap.json"
    path.write_text(json.dumps(snap))
    assert build_report(load([path]))["incidents"] == []
