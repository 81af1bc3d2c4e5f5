"""Collector helpers that need no tracefs: stats and lost counts, KML evidence, maps,
the atomic bundle writer, refusals, the gated command."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time

import pytest

from kmltrace.bundle import read_manifest
from kmltrace.collectors import command as command_mod
from kmltrace.collectors import metadata, processes, session, tracefs
from kmltrace.collectors.bundle_writer import BundleWriter
from kmltrace.errors import RefusedError

# per_cpu/cpu1/stats of an instance after a burst into an 8 KiB buffer (this machine, 6.18)
STATS = """entries: 120
overrun: 397284
commit overrun: 0
bytes: 6648
oldest event ts:   781.352012
now ts:   781.412346
dropped events: 0
read events: 2560
"""


def test_stats_and_lost_counts():
    stats = metadata.parse_stats(STATS)
    assert stats["overrun"] == 397284 and stats["read_events"] == 2560
    assert stats["oldest_event_ts"] == "781.352012"
    assert metadata.lost_from_stats(stats) == 397284
    assert metadata.lost_from_stats({"overrun": 1, "commit_overrun": 2, "dropped_events": 3}) == 6


def test_current_clock():
    assert metadata.current_clock("[local] global counter uptime\n") == "local"
    assert metadata.current_clock("local global [x86-tsc]\n") == "x86-tsc"


def test_kml_evidence_from_boot_message_and_symbols(tmp_path):
    kallsyms = tmp_path / "kallsyms"
    kallsyms.write_text("ffffffff81000000 T _stext\nffffffff81a01230 T kml_call_with_user\n"
                        "ffffffff81a01300 t kml_exit_to_user\nffffffff81a05000 D kml_data\n")
    info = metadata.kernel_info(kallsyms, dmesg="[0.0] " + metadata.KML_BOOT_MESSAGE + "\n")
    assert info["kml"] is True
    assert len(info["kml_evidence"]) == 2  # boot message, symbols (release is this kernel's)
    assert "kml_call_with_user, kml_exit_to_user" in info["kml_evidence"][1]
    plain = tmp_path / "plain"
    plain.write_text("ffffffff81000000 T _stext\n")
    info = metadata.kernel_info(plain, dmesg="nothing here")
    assert info["kml"] is os.uname().release.endswith("-kml")


def test_hidden_kallsyms_addresses_are_noted(tmp_path, monkeypatch):
    info = metadata.snapshot_kallsyms(tmp_path / "k")
    assert info["saved"] and (tmp_path / "k").stat().st_size > 0
    first = (tmp_path / "k").read_text().split("\n", 1)[0]
    assert info["addresses_hidden"] is first.startswith("0000000000000000 ")


def test_parse_maps():
    text = ("55d0c0a00000-55d0c0a01000 r--p 00000000 fd:01 123 /trusted/prog\n"
            "7ffd1c5e0000-7ffd1c601000 rw-p 00000000 00:00 0                          [stack]\n"
            "7f0000000000-7f0000001000 ---p 00000000 00:00 0 \n"
            "garbage\n")
    rows = processes.parse_maps(text)
    assert rows == [
        {"start": "0x55d0c0a00000", "end": "0x55d0c0a01000", "perms": "r--p",
         "path": "/trusted/prog"},
        {"start": "0x7ffd1c5e0000", "end": "0x7ffd1c601000", "perms": "rw-p", "path": "[stack]"},
        {"start": "0x7f0000000000", "end": "0x7f0000001000", "perms": "---p", "path": ""}]


def test_watcher_records_own_tree_and_counts_missed():
    watcher = processes.ProcessWatcher(roots=[os.getpid()])
    watcher.poll()
    rows = watcher.result()
    me = [r for r in rows if r["pid"] == os.getpid()]
    assert len(me) == 1 and me[0]["exe"] == os.path.realpath(sys.executable)
    assert any(m["path"] == "[stack]" for m in me[0]["maps"])
    assert watcher.missed({os.getpid(), 999999999}) == [999999999]


def _exec_event(pid: int, ts_ns: int) -> bytes:
    """A proc connector exec notification, as the kernel sends it."""
    event = (processes._EVENT.pack(processes.PROC_EVENT_EXEC, 0, ts_ns)
             + struct.pack("=ii", pid, pid))
    return b"\0" * processes._EVENT_AT + event


def test_a_row_read_after_the_exec_takes_the_exec_time():
    """A listener running late reads a process at its fork notification after the process
    has already exec'd, and it is gone when the exec notification is handled: the row shows
    the new image, so it must carry the exec's time, not the fork's (a real process)."""
    fork_ts = time.monotonic_ns()
    proc = subprocess.Popen(["sh", "-c", "exec sleep 30"])
    try:
        watcher = processes.ProcessWatcher(roots=[proc.pid])
        for _ in range(500):
            if os.path.basename(os.readlink(f"/proc/{proc.pid}/exe")) == "sleep":
                break
            time.sleep(0.01)
        exec_ts = time.monotonic_ns()           # stands for the exec, before the late read
        assert watcher.record(proc.pid, fork_ts)  # the fork notification, handled late
    finally:
        proc.kill()
        proc.wait()
    processes.ExecListener(watcher).handle(_exec_event(proc.pid, exec_ts))
    (row,) = watcher.result()
    assert os.path.basename(row["exe"]) == "sleep" and row["ts_ns"] == exec_ts
    # a row read before that exec keeps its own time
    watcher.exec_seen(proc.pid, time.monotonic_ns())
    assert watcher.result()[0]["ts_ns"] == exec_ts


def test_bundle_is_invisible_until_finished(tmp_path):
    final = tmp_path / "b"
    writer = BundleWriter(final)
    (writer.ftrace / "cpu0.raw").write_bytes(b"")
    writer.add_file("ftrace", "data", "ftrace_raw")
    writer.write_json("processes.json", [])
    writer.write_manifest({"kind": "collect", "captured": {"lost_events": 0}})
    assert not final.exists() and (tmp_path / "b.partial" / "bundle.json").is_file()
    assert writer.finish() == final
    manifest = read_manifest(final)
    assert manifest["kind"] == "collect"
    assert {"path": "ftrace", "role": "data", "format": "ftrace_raw"} in manifest["files"]
    assert not (tmp_path / "b.partial").exists()
    with pytest.raises(RefusedError, match="already exists"):
        BundleWriter(final)


def test_stale_partial_of_a_dead_collector_is_replaced(tmp_path):
    (tmp_path / "b.partial" / "junk").mkdir(parents=True)
    writer = BundleWriter(tmp_path / "b")
    assert not (writer.path / "junk").exists()


def test_refusals_name_the_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(RefusedError, match="needs root"):
        tracefs.require_tracefs()
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(tracefs, "TRACEFS_MOUNTS", (tmp_path / "nothing",))
    with pytest.raises(RefusedError, match="--mount"):
        tracefs.require_tracefs()


def test_event_spec():
    assert session.event_spec(None, False) == session.DEFAULT_EVENTS
    assert session.event_spec(["default,kvm:kvm_exit", "signal:*"], True) == \
        session.DEFAULT_EVENTS + ["kvm:kvm_exit", "signal:*", "kvm:*"]


def test_gated_command_waits_for_release(tmp_path):
    flag = tmp_path / "ran"
    command = command_mod.GatedCommand(
        ["sh", "-c", f'echo "$KMLTRACE_TRACE_MARKER" > {flag}'],
        env={session.MARKER_ENV: "/x/trace_marker"})
    try:
        assert command.poll() is None and not flag.exists()  # held before exec
        command.release()
        assert command.wait(10) == 0
    finally:
        command.terminate()
    assert flag.read_text() == "/x/trace_marker\n"


def test_gated_command_that_cannot_exec_exits_127(tmp_path):
    command = command_mod.GatedCommand([str(tmp_path / "missing")])
    command.release()
    assert command.wait(10) == 127
