"""Raw trace_pipe_raw pages of the real workload bundle decode to the same events as the
tracefs `trace` text of that capture (read from the same instance just before the pages)."""

from __future__ import annotations

import json
import shutil

import polars as pl
import pytest

from kmltrace.errors import InputError
from kmltrace.formats import ftrace_raw, ftrace_text

from tests.conftest import SAMPLES
from tests.formats.test_tracedat import expected_counts, workload_counts

SAMPLE = SAMPLES / "host-6.18-workload"
BUNDLE = SAMPLE / "bundle"


@pytest.fixture(scope="module")
def parsed():
    return ftrace_raw.parse_dir(BUNDLE)


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads((SAMPLE / "expected.json").read_text())


def test_meta(parsed):
    assert parsed.errors == []
    assert parsed.format == "ftrace_raw"
    assert parsed.meta["clock"] == "local" and parsed.meta["precision"] == "ns"
    assert parsed.meta["lost_events"] == 0 and parsed.meta["dropped_events"] == 0
    assert parsed.events["file"][0].endswith(".raw")


def test_equals_tracefs_text(parsed):
    text = ftrace_text.parse(SAMPLE / "trace.txt").events
    binary = parsed.events
    assert text.height == binary.height > 2000
    # tracefs prints microseconds rounded to nearest
    assert text["ts_ns"].to_list() == ((binary["ts_ns"] + 500) // 1000 * 1000).to_list()
    for column in ("cpu", "pid", "comm", "event", "system", "flags"):
        assert text[column].to_list() == binary[column].to_list(), column
    compared = 0
    for column in text.columns:
        if column in {"file", "line", "offset", "raw", "seq", "ts_ns"} or column.endswith("_sym") \
                or column not in binary.columns:
            continue
        t, b = text[column], binary[column]
        if isinstance(t.dtype, pl.List):
            t = t.list.eval(pl.element().cast(pl.String)).list.join(",")
            b = b.list.eval(pl.element().cast(pl.String)).list.join(",")
        t, b = t.cast(pl.String), b.cast(pl.String)
        mismatch = t.is_not_null() & (b.is_null() | (t != b))
        assert not mismatch.any(), (column, text.filter(mismatch).head(3))
        compared += int(t.is_not_null().sum())
    assert compared > 10_000


def test_workload_counts(parsed, expected):
    assert workload_counts(parsed.events, expected) == expected_counts(expected)


def test_tgid_from_saved_tgids(parsed, expected):
    e = parsed.events
    for pid in (expected["pid"], expected["child_pid"]):
        # kmlwork forks (no threads): each process is its own thread group
        assert e.filter(pl.col("pid") == pid)["tgid"].unique().to_list() == [pid]


def _copy_bundle(tmp_path):
    dest = tmp_path / "bundle"
    shutil.copytree(BUNDLE / "ftrace", dest / "ftrace")
    return dest


def test_missing_header_page(tmp_path):
    dest = _copy_bundle(tmp_path)
    (dest / "ftrace" / "header_page").unlink()
    with pytest.raises(InputError, match="missing") as info:
        ftrace_raw.parse_dir(dest)
    assert info.value.path.endswith("ftrace/header_page")


def test_truncated_raw_file(tmp_path, parsed):
    dest = _copy_bundle(tmp_path)
    raw = max((dest / "ftrace").glob("cpu*.raw"), key=lambda p: p.stat().st_size)
    data = raw.read_bytes()
    keep_pages = len(data) // 4096 - 1
    raw.write_bytes(data[:keep_pages * 4096 + 100])
    out = ftrace_raw.parse_dir(dest)
    (err,) = out.errors
    assert err.path.endswith(raw.name) and err.offset == keep_pages * 4096
    assert "truncated page" in err.message
    cpu = int(raw.stem[3:])
    full = parsed.events
    intact = full.filter((pl.col("cpu") != cpu) | (pl.col("offset") < keep_pages * 4096))
    assert out.events.height == intact.height < full.height


def test_bad_format_file(tmp_path, parsed):
    dest = _copy_bundle(tmp_path)
    fmt = dest / "ftrace" / "events" / "raw_syscalls" / "sys_exit" / "format"
    fmt.write_text(fmt.read_text().replace("offset:16;", "offset:sixteen;"))   # synthetic damage
    out = ftrace_raw.parse_dir(dest)
    (err,) = out.errors
    assert err.path == str(fmt) and err.line is not None and "cannot parse field" in err.message
    full = parsed.events
    assert out.events.height == full.height
    assert out.events.filter(pl.col("event") == "sys_enter").height == \
        full.filter(pl.col("event") == "sys_enter").height
    assert out.events.filter(pl.col("event").is_null()).height == \
        full.filter(pl.col("event") == "sys_exit").height


def _drain(path) -> bytes:
    """Read a trace_pipe_raw until it is empty, without blocking."""
    import os

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    chunks = []
    try:
        while True:
            try:
                block = os.read(fd, 4096)
            except BlockingIOError:
                break
            if not block:
                break
            chunks.append(block)
    finally:
        os.close(fd)
    return b"".join(chunks)


@pytest.mark.system
def test_live_overflowing_buffer_reports_lost_events(tmp_path):
    """A real 8 KiB-per-CPU buffer overrun by 20 000 getppid calls: every event left in the
    buffer decodes (as many as stats/cpuN `entries` say) and the loss is reported."""
    import os

    from tests.conftest import TRACEFS, require_tracefs

    require_tracefs()
    inst = TRACEFS / "instances" / f"kmltrace-binary-test-{os.getpid()}"
    inst.mkdir()
    dest = tmp_path / "ftrace"
    try:
        (inst / "buffer_size_kb").write_text("8")
        (inst / "events" / "raw_syscalls" / "sys_enter" / "enable").write_text("1")
        (inst / "tracing_on").write_text("1")
        for _ in range(20_000):
            os.getppid()
        (inst / "tracing_on").write_text("0")
        fmt_dir = dest / "events" / "raw_syscalls" / "sys_enter"
        fmt_dir.mkdir(parents=True)
        (dest / "stats").mkdir()
        for name in ("header_page", "header_event"):
            (dest / name).write_text((TRACEFS / "events" / name).read_text())
        (fmt_dir / "format").write_text(
            (TRACEFS / "events" / "raw_syscalls" / "sys_enter" / "format").read_text())
        entries = 0
        for cpu_dir in sorted((inst / "per_cpu").glob("cpu*")):
            stats = (cpu_dir / "stats").read_text()
            (dest / "stats" / cpu_dir.name).write_text(stats)
            entries += ftrace_raw.stats_counts([stats]).get("entries", 0)
            (dest / f"{cpu_dir.name}.raw").write_bytes(_drain(cpu_dir / "trace_pipe_raw"))
    finally:
        inst.rmdir()
    out = ftrace_raw.parse_dir(tmp_path)
    assert out.errors == []
    events = out.events
    assert events.filter(pl.col("event") == "sys_enter").height == entries > 0
    lost = events.filter(pl.col("event") == "lost_events")
    assert lost.height >= 1
    assert (lost["lost"].is_null() | (lost["lost"] > 0)).all()
    overrun = out.meta["overrun"] + out.meta["dropped_events"]
    assert overrun > 10_000
    assert out.meta["lost_events"] >= overrun if out.meta["lost_unknown_pages"] else \
        out.meta["lost_events"] > 0
    # the calls are ours: getppid is syscall 110 on x86-64
    ours = events.filter((pl.col("event") == "sys_enter") & (pl.col("pid") == os.getpid()))
    assert (ours["id"] == 110).sum() > 0
