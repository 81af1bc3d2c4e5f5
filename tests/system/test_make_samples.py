"""sample_traces/make_samples.py on this machine's real tracefs (root): it regenerates a capture
whose counts are exactly the workload's arguments in every text format, and leaves the
top-level tracing state and the instance list as it found them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kmltrace.bundle import read_manifest
from tests.conftest import REPO, TRACEFS, require_binary, require_tracefs

pytestmark = pytest.mark.system

SCRIPT = REPO / "sample_traces" / "make_samples.py"
ARGS = (11, 101, 7, 5)  # N M K P: small, distinct
TOP_LEVEL_FILES = ["tracing_on", "current_tracer", "buffer_size_kb", "set_event",
                   "set_event_pid", "trace_clock", "trace_options"]
FILES = ["workload.out", "expected.json", "PROVENANCE.md", "trace.txt", "trace-noirqinfo.txt",
         "trace-symoffset.txt", "trace-symaddr.txt", "trace-tgid.txt", "trace_pipe.txt",
         "trace.dat", "trace-v6.dat", "trace-cmd-report.txt", "trace-cmd-report-R.txt",
         "perf-script.txt", "perf-script-ns.txt", "perf-script-F.txt", "bundle/bundle.json",
         "bundle/processes.json", "bundle/ftrace/header_page", "bundle/ftrace/header_event",
         "bundle/ftrace/events/ftrace/print/format",
         "bundle/ftrace/events/exceptions/page_fault_user/format",
         "bundle/ftrace/saved_cmdlines", "bundle/ftrace/trace_clock"]


def our_instances() -> list[str]:
    return sorted(p.name for p in (TRACEFS / "instances").iterdir()
                  if p.name.startswith("kmlsamp-"))


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    require_tracefs()
    for tool in ("gcc", "trace-cmd", "perf"):
        require_binary(tool)
    out = tmp_path_factory.mktemp("samples")
    before = {name: (TRACEFS / name).read_text() for name in TOP_LEVEL_FILES}
    instances = our_instances()
    result = subprocess.run([sys.executable, str(SCRIPT), "--only", "workload", "--out", str(out),
                             "--name", "t", *map(str, ARGS)], capture_output=True, text=True,
                            timeout=300)
    after = {name: (TRACEFS / name).read_text() for name in TOP_LEVEL_FILES}
    return {"dir": out / "t-workload", "result": result, "before": before, "after": after,
            "instances_before": instances, "instances_after": our_instances()}


def test_script_succeeds_and_checks_every_text_format(capture):
    result = capture["result"]
    assert result.returncode == 0, result.stderr[-2000:]
    # the script's own self-check ran on each text format and found the exact counts
    for name in ("trace.txt", "trace-noirqinfo.txt", "trace-tgid.txt", "trace_pipe.txt",
                 "trace-cmd-report.txt", "perf-script.txt", "perf-script-F.txt"):
        assert f"{name}: counts exact" in result.stdout


def test_every_file_is_written(capture):
    missing = [f for f in FILES if not (capture["dir"] / f).is_file()]
    assert missing == []
    assert (capture["dir"] / "trace.dat").read_bytes()[:10] == b"\x17\x08\x44tracing"


def test_expected_numbers_come_from_the_workload(capture):
    d = capture["dir"]
    expected = json.loads((d / "expected.json").read_text())
    assert (expected["N"], expected["M"], expected["K"], expected["P"]) == ARGS
    out = dict(line.split(" ", 1) for line in (d / "workload.out").read_text().splitlines())
    assert expected["pid"] == int(out["pid"]) and expected["child_pid"] == int(out["child_pid"])
    stack = expected["ranges"]["stack"]
    assert int(stack["end"], 16) - int(stack["start"], 16) == ARGS[0] * 4096


def test_bundle_manifest_and_processes(capture):
    bundle = capture["dir"] / "bundle"
    manifest = read_manifest(bundle)
    assert manifest["kind"] == "collect"
    assert "ftrace:print" in manifest["captured"]["events"]
    assert manifest["kernel"]["kml"] is False
    processes = json.loads((bundle / "processes.json").read_text())
    expected = json.loads((capture["dir"] / "expected.json").read_text())
    assert sorted(p["pid"] for p in processes) == sorted([expected["pid"], expected["child_pid"]])
    heap = expected["ranges"]["heap"]
    parent = next(p for p in processes if p["pid"] == expected["pid"])
    # the touched heap lies inside one of the parent's mappings
    assert any(int(m["start"], 16) <= int(heap["start"], 16) and
               int(heap["end"], 16) <= int(m["end"], 16) for m in parent["maps"])


def test_tracing_state_is_restored(capture):
    assert capture["after"] == capture["before"]
    assert capture["instances_after"] == capture["instances_before"]
