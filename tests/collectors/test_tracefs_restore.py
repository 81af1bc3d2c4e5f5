"""Instance restore logic on a fake tracefs tree (plain files): what was written is put
back exactly, created instances are removed, also when the capture fails midway."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kmltrace.collectors import tracefs
from kmltrace.errors import RefusedError

DEFAULTS = {
    "tracing_on": "1\n",
    "buffer_size_kb": "1410\n",
    "current_tracer": "nop\n",
    "trace_clock": "[local] global counter uptime perf mono mono_raw boot tai x86-tsc\n",
    "set_event": "",
    "set_event_pid": "",
    "set_ftrace_filter": "#### all functions enabled ####\n",
    "options/event-fork": "0\n",
    "options/overwrite": "1\n",
    "events/raw_syscalls/sys_enter/enable": "0\n",
    "events/sched/filter": "none\n",
}


def populate(path: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)


class FakeInstance(tracefs.Instance):
    """tracefs fills a new instance directory itself; the fake does it by hand."""

    def _make_dir(self):
        self.path.mkdir()
        populate(self.path, DEFAULTS)

    def _remove_dir(self):
        shutil.rmtree(self.path)


@pytest.fixture
def fake_root(tmp_path) -> Path:
    (tmp_path / "instances").mkdir()
    (tmp_path / "available_events").write_text(
        "raw_syscalls:sys_enter\nraw_syscalls:sys_exit\nsched:sched_switch\n"
        "sched:sched_process_exec\nexceptions:page_fault_user\n")
    return tmp_path


def snapshot(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): p.read_text() for p in sorted(path.rglob("*")) if p.is_file()}


def configure(inst: tracefs.Instance) -> None:
    inst.write("tracing_on", "0")
    inst.write("buffer_size_kb", "256")
    inst.write("set_event_pid", "4242")
    inst.write("set_event_pid", "4243\n", append=True)
    inst.write("options/event-fork", "1")
    inst.write("events/raw_syscalls/sys_enter/enable", "1")
    inst.write("events/sched/filter", 'comm == "x"')
    inst.write("current_tracer", "function")
    inst.write("set_ftrace_filter", "exc_page_fault\n")
    inst.write("trace_clock", "global")


def test_existing_instance_is_restored_exactly(fake_root):
    existing = fake_root / "instances" / "theirs"
    existing.mkdir()
    populate(existing, {**DEFAULTS, "set_event_pid": "17\n99\n", "buffer_size_kb": "7\n"})
    before = snapshot(existing)
    inst = FakeInstance(fake_root, name="theirs")
    with inst:
        configure(inst)
        assert (existing / "set_event_pid").read_text() == "42424243\n"
        assert (existing / "buffer_size_kb").read_text() == "256"
    after = snapshot(existing)
    # list files come back line by line; plain values without their trailing newline
    assert after["set_event_pid"] == "17\n99\n"
    assert after["buffer_size_kb"] == "7"
    assert after["trace_clock"] == "local"
    assert after["set_ftrace_filter"] == ""  # "all functions" is the empty filter
    assert {k: v.strip() for k, v in after.items() if k not in ("trace_clock",
                                                                "set_ftrace_filter")} == \
        {k: v.strip() for k, v in before.items() if k not in ("trace_clock",
                                                              "set_ftrace_filter")}
    assert existing.is_dir()  # not ours to remove
    assert inst.journal == []


def test_created_instance_removed_even_on_error(fake_root):
    inst = FakeInstance(fake_root)
    with pytest.raises(RuntimeError):
        with inst:
            assert inst.name.startswith(f"kmltrace-{os.getpid()}-")
            configure(inst)
            raise RuntimeError("capture failed midway")
    assert list((fake_root / "instances").iterdir()) == []
    assert inst.restore_errors == []


def test_two_instances_get_distinct_names(fake_root):
    a, b = FakeInstance(fake_root), FakeInstance(fake_root)
    assert a.name != b.name


def test_restore_failure_is_reported_not_hidden(fake_root):
    inst = FakeInstance(fake_root)
    with inst:
        inst.write("buffer_size_kb", "256")
        (inst.path / "buffer_size_kb").chmod(0o444)
        (inst.path / "buffer_size_kb").unlink()
        (inst.path / "buffer_size_kb").mkdir()  # the write back cannot succeed
    assert len(inst.restore_errors) == 1 and "buffer_size_kb" in inst.restore_errors[0]


def test_resolve_events_expands_and_names_close_ones(fake_root):
    available = tracefs.available_events(fake_root)
    assert tracefs.resolve_events(["raw_syscalls:*", "sched:sched_switch"], available) == [
        "raw_syscalls:sys_enter", "raw_syscalls:sys_exit", "sched:sched_switch"]
    with pytest.raises(RefusedError) as info:
        tracefs.resolve_events(["sched:sched_swich", "nosuch:*"], available)
    message = str(info.value)
    assert "sched:sched_swich (close: sched:sched_switch" in message
    assert "nosuch:*" in message


def test_leftover_instances_are_those_of_dead_collectors(fake_root):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for name in (f"kmltrace-{dead.pid}-1", f"kmltrace-{os.getpid()}-3", "kmltrace-samples-12",
                 "other"):
        (fake_root / "instances" / name).mkdir()
    assert tracefs.leftover_instances(fake_root) == [f"kmltrace-{dead.pid}-1"]
