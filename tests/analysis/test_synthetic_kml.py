"""The SYNTHETIC KML capture (sample_traces/synthetic/kml-workload, made by make_kml.py from the
real host-6.18-workload capture by changing only the KML facts) gives exactly the incidents its
changes imply, with the counts the script recorded in its expected.json; the original real
capture gives none of them."""

import json
import subprocess
import sys

from kmltrace.capture import load
from kmltrace.report import build_report
from tests.conftest import SAMPLES

SYNTHETIC = SAMPLES / "synthetic" / "kml-workload"
ORIGINAL = SAMPLES / "host-6.18-workload"
KML_KINDS = {"kernel_mode_process", "gs_write", "redzone_clobber", "stack_starvation",
             "ist_missing"}


def by_kind(report):
    out = {}
    for incident in report["incidents"]:
        out.setdefault(incident["kind"], []).append(incident)
    return out


def test_synthetic_kml_capture_gives_exactly_the_implied_incidents():
    facts = json.loads((SYNTHETIC / "expected.json").read_text())
    report = build_report(load([str(SYNTHETIC)]))
    kinds = by_kind(report)
    assert {k: len(v) for k, v in kinds.items()} == {
        k: n for k, n in facts["implied_incidents"].items() if n}
    [kernel] = [p for p in report["processes"] if p["mode"] == "kernel"]
    assert (kernel["pid"], kernel["exe"]) == (facts["pid"], facts["exe"])
    assert kernel["kml_faults"] == facts["u_bit_cleared_faults"]
    # the same pid before its exec of kmlwork is still a user-mode image
    assert [p["mode"] for p in report["processes"] if p["pid"] == facts["pid"]] == ["user", "kernel"]
    [gs] = kinds["gs_write"]
    assert gs["severity"] == "error" and facts["cpus"] > 1
    assert [e["line"] for e in gs["evidence"]] == facts["arch_prctl_set_gs_lines"]
    assert kinds["redzone_clobber"][0]["count"] == facts["u_bit_cleared_faults"]
    [starve] = kinds["stack_starvation"]
    assert starve["severity"] == "warning" and starve["predicted"] is True
    assert starve["count"] == facts["u_bit_cleared_on_stack"]


def test_original_capture_gives_none_of_them():
    for target in (ORIGINAL / "bundle", ORIGINAL / "trace.txt"):
        report = build_report(load([str(target)]))
        assert not KML_KINDS & set(by_kind(report)), target


def test_make_kml_reproduces_the_committed_sample(tmp_path):
    """The committed script regenerates the committed synthetic capture byte for byte."""
    before = {p.name: p.read_bytes() for p in SYNTHETIC.iterdir() if p.is_file()}
    subprocess.run([sys.executable, str(SAMPLES / "synthetic" / "make_kml.py"),
                    "host-6.18-workload", "kml-workload"], check=True, capture_output=True)
    after = {p.name: p.read_bytes() for p in SYNTHETIC.iterdir() if p.is_file()}
    assert before == after
