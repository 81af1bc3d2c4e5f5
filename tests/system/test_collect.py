"""kmltrace collect on this machine's real tracefs (root): exact counts of a known workload,
restoration of every setting, SIGINT/SIGKILL handling, refusal, streaming and loss."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, TRACEFS, require_binary, require_tracefs

pytestmark = pytest.mark.system

KMLWORK_SRC = REPO / "sample_traces" / "workload" / "kmlwork.c"
SYSRATE_SRC = Path(__file__).with_name("sysrate.c")
GETPPID, ARCH_PRCTL = 110, 158  # x86-64 syscall numbers
PAGE = 4096
TOP_LEVEL_FILES = ["tracing_on", "current_tracer", "buffer_size_kb", "set_event",
                   "set_event_pid", "trace_clock", "trace_options"]


def top_level_state() -> dict:
    """The top-level settings we must never change, and our own instances."""
    state = {name: (TRACEFS / name).read_text() for name in TOP_LEVEL_FILES}
    state["instances"] = sorted(p.name for p in (TRACEFS / "instances").iterdir()
                                if p.name.startswith("kmltrace-") and
                                p.name.split("-")[1].isdigit())
    return state


def kmltrace(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kmltrace", *args], capture_output=True,
                          text=True, timeout=120, **kwargs)


def collect_json(*args) -> tuple[dict, str]:
    result = kmltrace("collect", "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), result.stderr


@pytest.fixture(scope="module")
def binaries(tmp_path_factory) -> dict[str, Path]:
    require_tracefs()
    gcc = require_binary("gcc")
    out = tmp_path_factory.mktemp("bin")
    built = {}
    flags = ["-O2", "-fno-stack-clash-protection", "-fno-stack-protector"]
    for name, src in (("kmlwork", KMLWORK_SRC), ("sysrate", SYSRATE_SRC)):
        subprocess.run([gcc, *flags, "-o", str(out / name), str(src)], check=True)
        built[name] = out / name
    return built


def decoded(bundle: Path):
    from kmltrace.bundle import load_bundle
    import polars as pl

    _, parsed = load_bundle(bundle)
    ftrace = [p for p in parsed if p.format == "ftrace_raw"]
    assert ftrace and not ftrace[0].errors, [str(e) for p in ftrace for e in p.errors]
    return pl, ftrace[0].events


def key_values(text: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in text.splitlines() if line.count(" ") == 1)


def test_sigint_saves_a_valid_bundle_and_removes_the_instance(binaries, tmp_path):
    before = top_level_state()
    out = tmp_path / "bundle"
    proc = subprocess.Popen([sys.executable, "-m", "kmltrace", "collect", "--json", "-o",
                             str(out), "--", str(binaries["sysrate"]), "2000", "30"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2.0)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    result = json.loads(stdout)
    assert result["stop_reason"] == "signal"
    assert result["command_exit"] is not None  # the command was ended, not left running
    assert result["events"] > 2000 and result["lost_events"] == 0
    from kmltrace.bundle import read_manifest
    assert read_manifest(out)["captured"]["stop_reason"] == "signal"
    assert (out / "ftrace" / "cpu0.raw").exists()
    assert top_level_state() == before


def test_sigkill_leaves_an_instance_that_is_named_and_cleaned(binaries, tmp_path):
    before = top_level_state()
    proc = subprocess.Popen([sys.executable, "-m", "kmltrace", "collect", "-o",
                             str(tmp_path / "killed"), "--duration", "30"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    name = f"kmltrace-{proc.pid}-1"
    deadline = time.monotonic() + 30
    while not (TRACEFS / "instances" / name).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    proc.kill()
    proc.wait()
    assert (TRACEFS / "instances" / name).exists()
    assert not (tmp_path / "killed").exists()  # never renamed: no half bundle looks valid
    try:
        result = kmltrace("collect", "--duration", "0.2", "-o", str(tmp_path / "next"))
        assert result.returncode == 0, result.stderr
        assert name in result.stderr and "--clean" in result.stderr
    finally:
        clean = kmltrace("collect", "--clean", "--json")
    assert clean.returncode == 0, clean.stderr
    assert name in json.loads(clean.stdout)["removed"]
    assert not (TRACEFS / "instances" / name).exists()
    assert top_level_state() == before


def test_non_root_is_refused_with_one_line(tmp_path):
    require_tracefs()
    setpriv = require_binary("setpriv")
    result = subprocess.run([setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                             sys.executable, "-m", "kmltrace", "collect", "--duration", "1",
                             "-o", str(tmp_path / "b")],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO / "src")}, cwd="/")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs root" in lines[0], result.stderr
    assert not (tmp_path / "b").exists()


def test_tiny_buffer_burst_reports_lost_events(binaries, tmp_path):
    out = tmp_path / "bundle"
    result, _ = collect_json("-o", str(out), "--events", "raw_syscalls:*", "--buffer-kb", "8",
                             "--", str(binaries["sysrate"]), "-b", "300000")
    assert result["lost_events"] > 0
    manifest = json.loads((out / "bundle.json").read_text())
    assert manifest["captured"]["lost_events"] == result["lost_events"]
    per_cpu = manifest["captured"]["per_cpu"]
    assert sum(s["overrun"] + s["commit_overrun"] + s["dropped_events"]
               for s in per_cpu.values()) == \
        result["lost_events"]
