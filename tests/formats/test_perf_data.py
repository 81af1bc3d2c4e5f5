"""perf.data TARGETs: detected by magic, read through perf script."""

from __future__ import annotations

import subprocess

import polars as pl

from kmltrace.formats import perf_data
from kmltrace.formats.sniff import parse_file
from tests.conftest import REPO, require_binary, require_root


def test_sniff_by_magic_only():
    assert perf_data.sniff(b"PERFILE2" + b"\0" * 100)
    assert not perf_data.sniff(b"\x17\x08Dtracing6")
    assert not perf_data.sniff(b"kmlwork 123 [000] 1.0: raw_syscalls:sys_enter: NR 110")


def test_truncated_perf_data_is_one_error_naming_the_file(tmp_path):
    require_binary("perf")
    bad = tmp_path / "perf.data"
    bad.write_bytes(b"PERFILE2" + b"\0" * 40)  # synthetic: a header cut short
    parsed = parse_file(bad)
    assert parsed.format == "perf_data" and parsed.events.height == 0
    assert len(parsed.errors) == 1 and str(bad) in str(parsed.errors[0])


def test_recorded_perf_data_gives_exact_counts(tmp_path):
    require_root()  # tracepoints through perf need root here (perf_event_paranoid 2)
    perf = require_binary("perf")
    gcc = require_binary("gcc")
    exe = tmp_path / "sysrate"
    subprocess.run([gcc, "-O2", "-o", str(exe), str(REPO / "tests/system/sysrate.c")],
                   check=True)
    data = tmp_path / "perf.data"
    run = subprocess.run([perf, "record", "-q", "-o", str(data), "-e", "raw_syscalls:sys_enter",
                          "--", str(exe), "-b", "700"], capture_output=True, text=True,
                         check=True)
    pid = int(dict(line.split(" ", 1) for line in run.stdout.splitlines())["pid"])
    parsed = parse_file(data)
    assert parsed.format == "perf_data" and not parsed.errors
    events = parsed.events
    assert set(events["file"].unique()) == {str(data)}
    mine = events.filter((pl.col("pid") == pid) & (pl.col("event") == "sys_enter") &
                         (pl.col("id") == 110))
    assert mine.height == 700
