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
