"""kmltrace collect on this machine's real tracefs (root): exact counts of a known workload,
restoration of every setting, SIGINT/SIGKILL handling, refusal, streaming and loss."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, TRACEFS, require, require_binary, require_tracefs

pytestmark = pytest.mark.system

KMLWORK_SRC = REPO / "sample_traces" / "workload" / "kmlwork.c"
SYSRATE_SRC = Path(__file__).with_name("sysrate.c")
GETPPID, ARCH_PRCTL = 110, 158  # x86-64 syscall numbers
PAGE = 4096
TOP_LEVEL_FILES = ["tracing_on", "current_tracer", "buffer_size_kb", "set_event",
                   "set_event_pid", "trace_clock", "trace_options"]


def top_level_state() -> dict:
    """The top-level settings we must never change, and the instance list."""
    state = {name: (TRACEFS / name).read_text() for name in TOP_LEVEL_FILES}
    state["instances"] = {p.name for p in (TRACEFS / "instances").iterdir()}
    return state


def assert_unchanged(before: dict) -> None:
    """Top-level settings identical; no instance left behind. Other tools (and tests of
    other parts) may create instances meanwhile: a new instance is ours and left behind
    only when the process named in it is gone."""
    after = top_level_state()
    assert {k: v for k, v in after.items() if k != "instances"} == \
        {k: v for k, v in before.items() if k != "instances"}
    for name in after["instances"] - before["instances"]:
        parts = name.split("-")
        owner = parts[1] if len(parts) > 2 and parts[1].isdigit() else None
        assert owner is None or Path(f"/proc/{owner}").exists(), f"{name} left behind"


def wait_for_tracing(collector_pid: int, timeout: float = 30) -> None:
    """Until the collector's instance traces its command (released right after)."""
    instance = TRACEFS / "instances" / f"kmltrace-{collector_pid}-1"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            # a new instance starts with tracing on: wait for the command's pid filter too
            if (instance / "set_event_pid").read_text().strip() and \
                    (instance / "tracing_on").read_text().strip() == "1":
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{instance} never started tracing")


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


def test_workload_counts_exact_and_settings_restored(binaries, tmp_path):
    before = top_level_state()
    n, m, k, p = 37, 5000, 300, 11
    out = tmp_path / "bundle"
    # through sh so the workload can find the instance's trace_marker (its phase markers)
    result, stderr = collect_json("-o", str(out), "--", "sh", "-c",
                                  f'exec {binaries["kmlwork"]} -m "$KMLTRACE_TRACE_MARKER" '
                                  f'{n} {m} {k} {p}')
    assert_unchanged(before)
    assert not any(result["instance"] in name for name in os.listdir(TRACEFS / "instances"))
    work = key_values(stderr)  # the workload's own output went to stderr
    pid, child = int(work["pid"]), int(work["child_pid"])
    assert result["lost_events"] == 0 and result["command_exit"] == 0
    assert result["bundle"] == str(out) and not Path(str(out) + ".partial").exists()

    pl, events = decoded(out)
    assert result["events"] == events.height
    exec_ts = events.filter((pl.col("event") == "sched_process_exec") & (pl.col("pid") == pid) &
                            (pl.col("filename") == str(binaries["kmlwork"])))["ts_ns"]
    assert exec_ts.len() == 1  # sh exec'd into kmlwork once
    # what sh did before that exec (it calls getppid once itself) is not the workload's
    events = events.filter((pl.col("pid") != pid) | (pl.col("ts_ns") >= exec_ts[0]))

    def count(expr) -> int:
        return events.filter(expr).height

    def syscalls(task, nr):
        return count((pl.col("pid") == task) & (pl.col("event") == "sys_enter") &
                     (pl.col("id") == nr))

    def faults(task, lo, hi):
        return count((pl.col("pid") == task) & (pl.col("event") == "page_fault_user") &
                     (pl.col("address") >= lo) & (pl.col("address") < hi))

    assert syscalls(pid, GETPPID) == m
    assert syscalls(child, GETPPID) == k
    set_gs = count((pl.col("pid") == pid) & (pl.col("event") == "sys_enter") &
                   (pl.col("id") == ARCH_PRCTL) & (pl.col("args").list.get(0) == 0x1001))
    assert set_gs == 1  # arch_prctl(ARCH_SET_GS); the loader's own arch_prctl calls differ
    assert faults(pid, int(work["stack_lo"], 16), int(work["stack_hi"], 16)) == n
    assert faults(pid, int(work["heap_lo"], 16), int(work["heap_hi"], 16)) == n
    assert faults(child, int(work["child_heap_lo"], 16), int(work["child_heap_hi"], 16)) == p
    assert count((pl.col("event") == "sched_process_fork") & (pl.col("child_pid") == child)) == 1
    markers = events.filter((pl.col("event") == "print") & (pl.col("pid") == pid))
    begin = markers.filter(pl.col("buf").str.contains("getppid begin"))["ts_ns"]
    end = markers.filter(pl.col("buf").str.contains("getppid end"))["ts_ns"]
    assert begin.len() == 1 and end.len() == 1
    assert count((pl.col("pid") == pid) & (pl.col("event") == "sys_enter") &
                 (pl.col("id") == GETPPID) & (pl.col("ts_ns") > begin[0]) &
                 (pl.col("ts_ns") < end[0])) == m

    processes = json.loads((out / "processes.json").read_text())
    mine = [r for r in processes if r["pid"] == pid]  # sh, then kmlwork (if sh was seen)
    assert mine[-1]["exe"] == str(binaries["kmlwork"])
    if "ts_ns" in mine[-1]:
        # stamped with the proc connector's exec time, on the trace's own clock: the same
        # exec as sched_process_exec, microseconds apart (a row read late, after the exec,
        # at the fork notification, still gets the exec's time: processes.exec_seen)
        assert abs(mine[-1]["ts_ns"] - exec_ts[0]) < 5_000_000, (mine[-1]["ts_ns"], exec_ts[0])
    assert any(m_["path"] == "[stack]" for m_ in mine[-1]["maps"])
    manifest = json.loads((out / "bundle.json").read_text())
    assert manifest["kind"] == "collect" and manifest["kernel"]["kml"] is False
    assert manifest["captured"]["lost_events"] == 0
    assert manifest["kernel"]["release"] == os.uname().release


def test_streaming_small_buffer_loses_nothing(binaries, tmp_path):
    rate, seconds, buffer_kb = 60000, 2, 256
    out = tmp_path / "bundle"
    result, stderr = collect_json("-o", str(out), "--events", "raw_syscalls:*", "--buffer-kb",
                                  str(buffer_kb), "--", str(binaries["sysrate"]), str(rate),
                                  str(seconds))
    calls = int(key_values(stderr)["getppid"])
    pid = int(key_values(stderr)["pid"])
    assert calls == rate * seconds
    # 20x the per-CPU ring buffer went through it (the workload runs on one CPU at a time)
    assert result["bytes"] >= 20 * buffer_kb * 1024
    assert result["lost_events"] == 0
    pl, events = decoded(out)
    mine = events.filter((pl.col("pid") == pid) & (pl.col("id") == GETPPID))
    assert mine.filter(pl.col("event") == "sys_enter").height == calls
    assert mine.filter(pl.col("event") == "sys_exit").height == calls


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_a_valid_bundle_and_removes_the_instance(binaries, tmp_path, sig):
    before = top_level_state()
    out = tmp_path / "bundle"
    proc = subprocess.Popen([sys.executable, "-m", "kmltrace", "collect", "--json", "-o",
                             str(out), "--", str(binaries["sysrate"]), "2000", "30"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_tracing(proc.pid)
    time.sleep(1.0)  # the command runs from here: ~2000 calls, ~4000 events
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    result = json.loads(stdout)
    assert result["stop_reason"] == "signal"
    assert result["command_exit"] is not None  # the command was ended, not left running
    assert result["events"] > 2000 and result["lost_events"] == 0
    from kmltrace.bundle import read_manifest
    assert read_manifest(out)["captured"]["stop_reason"] == "signal"
    assert (out / "ftrace" / "cpu0.raw").exists()
    assert_unchanged(before)


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
    assert_unchanged(before)


NOBODY = ["--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def nobody_python(setpriv: str, workdir: Path) -> tuple[str, dict]:
    """An interpreter and environment under which user nobody can import kmltrace: this one
    when nobody may read it (and the checkout), else the system python3 with copies of the
    pure-Python packages the refusal needs in a world-readable directory."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    probe = [setpriv, *NOBODY, sys.executable, "-c", "import kmltrace.verbs.collect"]
    if subprocess.run(probe, env=env, cwd="/", capture_output=True).returncode == 0:
        return sys.executable, env
    import click
    import rich

    import kmltrace
    workdir.chmod(0o755)
    for package in (kmltrace, click, rich):
        shutil.copytree(Path(package.__file__).parent, workdir / package.__name__)
    system_python = shutil.which("python3", path="/usr/bin:/bin")
    require(system_python is not None, "user nobody cannot run this Python, and there is no "
            "system python3 to run a readable copy with")
    return system_python, {**os.environ, "PYTHONPATH": str(workdir)}


def test_non_root_is_refused_with_one_line(tmp_path):
    require_tracefs()
    setpriv = require_binary("setpriv")
    with tempfile.TemporaryDirectory(prefix="kmltrace-nobody-") as workdir:
        python, env = nobody_python(setpriv, Path(workdir))
        result = subprocess.run([setpriv, *NOBODY, python, "-s", "-m", "kmltrace", "collect",
                                 "--duration", "1", "-o", str(tmp_path / "b")],
                                capture_output=True, text=True, timeout=60, env=env, cwd="/")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs root" in lines[0], result.stderr
    assert not (tmp_path / "b").exists()


def test_tiny_buffer_burst_reports_lost_events(binaries, tmp_path):
    """A burst into an 8 KiB buffer while the collector cannot read (stopped with SIGSTOP:
    deterministic, where a real-time reader on an idle CPU might otherwise keep up)."""
    out, go, done = tmp_path / "bundle", tmp_path / "go", tmp_path / "done"
    script = (f"while [ ! -e {go} ]; do sleep 0.02; done; "
              f"{binaries['sysrate']} -b 300000 >/dev/null; touch {done}")
    proc = subprocess.Popen([sys.executable, "-m", "kmltrace", "collect", "--json", "-o",
                             str(out), "--events", "raw_syscalls:*", "--buffer-kb", "8", "--",
                             "sh", "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for_tracing(proc.pid)
    time.sleep(0.3)
    deadline = time.monotonic() + 30
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        go.touch()
        while time.monotonic() < deadline and not done.exists():
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    stdout, stderr = proc.communicate(timeout=60)
    assert done.exists() and proc.returncode == 0, stderr
    result = json.loads(stdout)
    assert result["lost_events"] > 0
    manifest = json.loads((out / "bundle.json").read_text())
    assert manifest["captured"]["lost_events"] == result["lost_events"]
    per_cpu = manifest["captured"]["per_cpu"]
    assert sum(s["overrun"] + s["commit_overrun"] + s["dropped_events"]
               for s in per_cpu.values()) == result["lost_events"]
    # 600,000 events were made; what was kept plus what was lost accounts for them
    assert result["events"] + result["lost_events"] >= 600_000


def test_perf_alongside_sees_the_same_calls(binaries, tmp_path):
    require_binary("perf")
    calls = 3000
    out = tmp_path / "bundle"
    result, stderr = collect_json("--perf", "--events", "raw_syscalls:*", "-o", str(out), "--",
                                  str(binaries["sysrate"]), "-b", str(calls))
    pid = int(key_values(stderr)["pid"])
    assert result["perf"] is True and (out / "perf.txt").stat().st_size > 0
    from kmltrace.bundle import load_bundle
    import polars as pl

    _, parsed = load_bundle(out)
    by_format = {p.format: p.events for p in parsed}
    times = {}
    for fmt in ("ftrace_raw", "perf_script"):
        events = by_format[fmt]
        enters = events.filter((pl.col("pid") == pid) & (pl.col("event") == "sys_enter") &
                               (pl.col("id") == GETPPID))
        assert enters.height == calls, fmt
        times[fmt] = enters["ts_ns"].sort()
    # one clock (CLOCK_MONOTONIC) for both: the same call is stamped within microseconds
    # (perf script prints microseconds; an interrupt between the two probes can add more to
    # a few calls, so the median is what is compared)
    gap = (times["ftrace_raw"] - times["perf_script"]).abs()
    assert gap.median() < 5_000


def test_short_lived_exec_is_read_when_it_happens():
    """A process that lives ~20 ms is read at its exec (proc connector), not by luck."""
    require_tracefs()  # root
    from kmltrace.collectors.processes import ExecListener, ProcessWatcher

    watcher = ProcessWatcher(roots=[os.getpid()])
    listener = ExecListener(watcher)
    require(listener.open(), f"no proc connector (CONFIG_PROC_EVENTS): {listener.error}")
    listener.start()
    started = time.monotonic_ns()
    try:
        child = subprocess.run(["sh", "-c", "exec sleep 0.02"], check=True)
    finally:
        listener.stop()
    assert child.returncode == 0
    sleeps = [r for r in watcher.result() if r["exe"] and r["exe"].endswith("/sleep")]
    assert len(sleeps) == 1 and sleeps[0]["comm"] == "sleep"
    assert abs(sleeps[0]["ts_ns"] - started) < 2_000_000_000  # CLOCK_MONOTONIC of its exec
    assert any(m["path"] == "[stack]" for m in sleeps[0]["maps"])


THREADED = """
import os, sys, threading, time
go, calls = sys.argv[1], int(sys.argv[2])
def work():
    while not os.path.exists(go):
        time.sleep(0.01)
    for _ in range(calls):
        os.getppid()
    # one write(2) per line: print() writes the number and the newline separately, and
    # two threads could interleave them ("2296622967\\n\\n")
    os.write(1, f"{threading.get_native_id()}\\n".encode())
threads = [threading.Thread(target=work) for _ in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


def test_pid_follows_every_existing_thread(binaries, tmp_path):
    """--pid on a running multi-threaded process: threads that existed before the capture
    are traced too (set_event_pid filters tasks, not processes)."""
    go, calls, out = tmp_path / "go", 3000, tmp_path / "bundle"
    target = subprocess.Popen([sys.executable, "-c", THREADED, str(go), str(calls)],
                              stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)  # both threads exist and wait for the go file
    proc = subprocess.Popen([sys.executable, "-m", "kmltrace", "collect", "--json", "-o",
                             str(out), "--events", "raw_syscalls:*", "--pid", str(target.pid)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_tracing(proc.pid)
    time.sleep(0.3)
    go.touch()
    tids = [int(line) for line in target.communicate(timeout=60)[0].split()]
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert json.loads(stdout)["stop_reason"] == "pid_exit"
    pl, events = decoded(out)
    assert len(tids) == 2
    for tid in tids:
        assert events.filter((pl.col("pid") == tid) & (pl.col("event") == "sys_enter") &
                             (pl.col("id") == GETPPID)).height == calls
