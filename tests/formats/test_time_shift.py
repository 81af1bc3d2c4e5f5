"""trace.dat TIME_SHIFT (a guest's file of a host-guest recording): times moved onto the
host's clock as libtracecmd moves them.

The file is sample_traces/synthetic/time-shift: SYNTHETIC in its TIME_SHIFT option only (a
real 6.12 guest recording with TSC2NSEC), and the reference is what the host's real
`trace-cmd report -t` printed for it."""

from __future__ import annotations

import struct
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kmltrace.formats import tracecmd_report, tracedat
from kmltrace.formats.tracedat_clock import (INTERPOLATE, TimeShift, host_sync,
                                             parse_time_shift)

from tests.conftest import REPO, SAMPLES, require_binary

HERE = SAMPLES / "synthetic" / "time-shift"
SHIFTED = HERE / "time-shift.dat"
ORIGINAL = SAMPLES / "guest-6.12-tracecmd" / "tsc2nsec.dat"
PEER = struct.pack("<Q", 0x6B6D6C7472616365)    # the option's first bytes (make_time_shift.py)

sys.path.insert(0, str(SAMPLES / "synthetic"))
import make_time_shift  # noqa: E402


@pytest.fixture(scope="module")
def shifted():
    return tracedat.parse(SHIFTED)


def test_equals_trace_cmd_report(shifted):
    """Every time to the nanosecond, and the rows in trace-cmd's order."""
    text = tracecmd_report.parse(HERE / "report-t.txt")
    assert text.meta["precision"] == "ns" and shifted.errors == []
    assert shifted.meta["times_corrected"]["time_shift"] == {
        "peer_trace_id": "0x6b6d6c7472616365", "cpus": 2, "samples": [3, 4],
        "interpolate": True}
    assert shifted.events.height == text.events.height > 400
    for column in ("ts_ns", "cpu", "pid", "event", "address"):
        assert shifted.events[column].to_list() == text.events[column].to_list(), column
    assert shifted.events["seq"].to_list() == list(range(shifted.events.height))


def test_the_shift_moves_both_cpus_and_reorders_them(shifted):
    """Not a no-op: each CPU's times moved, and the merged order of the CPUs changed."""
    original = tracedat.parse(ORIGINAL).events
    assert original.height == shifted.events.height
    key = ["cpu", "offset"]
    both = original.select(*key, pl.col("ts_ns").alias("before")).join(
        shifted.events.select(*key, pl.col("ts_ns").alias("after")), on=key)
    assert both.height == original.height
    moved = both.filter(pl.col("before") != pl.col("after"))
    assert set(moved["cpu"].unique()) == {0, 1}
    assert original["cpu"].to_list() != shifted.events["cpu"].to_list()


def test_option_as_written():
    """The option's bytes (make_time_shift.time_shift_option) read back as its samples."""
    data = make_time_shift.time_shift_option(make_time_shift.SAMPLES, 294)
    shift = parse_time_shift(data)
    assert shift.peer_trace_id == 0x6B6D6C7472616365 and shift.flags == INTERPOLATE
    for cpu, samples in enumerate(make_time_shift.SAMPLES):
        assert shift.cpus[cpu].T.tolist() == [list(s) for s in samples]


def test_samples_sorted_and_one_per_time():
    """libtracecmd sorts each CPU's samples by time and keeps the first of equal times."""
    times, offsets = [30, 10, 10, 20], [3, 1, 99, 2]
    data = struct.pack("<QIii", 1, 0, 1, 4) + struct.pack("<4q", *times) + \
        struct.pack("<4q", *offsets) + struct.pack("<4q", 1, 1, 1, 1)
    (samples,) = parse_time_shift(data).cpus
    assert samples[0].tolist() == [10, 20, 30] and samples[1].tolist() == [1, 2, 3]
    assert samples[3].tolist() == [0, 0, 0]            # no fraction bits written: 0


@pytest.mark.parametrize("cut", [0, 15, 16 + 3, 16 + 4 + 8, 200])
def test_option_cut_short_is_an_error(cut):
    data = make_time_shift.time_shift_option(make_time_shift.SAMPLES, 294)
    data = data[:cut] if cut < 200 else data[:16] + struct.pack("<i", 10**6) + data[20:]
    with pytest.raises(ValueError):
        parse_time_shift(data[:cut] if cut < 200 else data)


@settings(max_examples=300, deadline=None)
@given(edits=st.lists(st.tuples(st.integers(0, 293), st.integers(0, 255)), max_size=8),
       keep=st.integers(0, 294))
def test_fuzzed_option_raises_only_value_error(edits, keep):
    """The option with bytes overwritten and cut: a TimeShift whose arrays fit in the bytes,
    or a ValueError."""
    data = bytearray(make_time_shift.time_shift_option(make_time_shift.SAMPLES, 294))
    for at, value in edits:
        data[at] = value
    data = bytes(data[:keep])
    try:
        shift = parse_time_shift(data)
    except ValueError:
        return
    assert all(c.shape[0] == 4 and c.shape[1] * 24 <= len(data) for c in shift.cpus)


def test_damaged_option_is_reported_and_not_applied(tmp_path):
    """A TIME_SHIFT that does not parse (a CPU count of 1000 in 294 bytes): one error naming
    the file and the option's offset; every event kept, with the times of the file without
    the option."""
    data = bytearray(SHIFTED.read_bytes())
    at = data.find(PEER)
    assert at > 0 and data.find(PEER, at + 1) < 0
    struct.pack_into("<i", data, at + 12, 1000)
    damaged = tmp_path / "damaged.dat"
    damaged.write_bytes(bytes(data))
    parsed = tracedat.parse(damaged)
    (err,) = parsed.errors
    assert "TIME_SHIFT option not applied: 1000 CPUs in 294 bytes" in str(err)
    assert str(err).startswith(f"{damaged}@{at - 6:#x}: ")
    original = tracedat.parse(ORIGINAL).events
    assert parsed.events["ts_ns"].to_list() == original["ts_ns"].to_list()


def _c_host_sync(ts: int, samples: list[tuple[int, int, int, int]], flags: int) -> int:
    """libtracecmd's timestamp_host_sync for one time, line by line, in Python integers
    wrapped as C's 64-bit types wrap (the reference of the column version)."""
    u64 = (1 << 64) - 1

    def s64(x):
        x &= u64
        return x - (1 << 64) if x >> 63 else x

    def cdiv(a, b):
        q = abs(a) // abs(b)
        return q if (a < 0) == (b < 0) else -q

    if len(samples) == 1:
        return (ts + samples[0][1]) & u64
    times = [s[0] & u64 for s in samples]
    if len(samples) == 2 or ts <= times[0]:
        k = 0
    elif ts >= times[-1]:
        k = len(samples) - 2
    else:
        k = max(i for i in range(len(samples) - 1) if times[i] <= ts)
    (t0, o0, scale, frac), (t1, o1, _, _) = samples[k], samples[k + 1]
    if flags & INTERPOLATE:
        delta = s64(t1 - t0)
        offset = s64(s64(s64(ts) - t0) * s64(o1 - o0))
        correction = s64(o0 + cdiv(s64(offset + cdiv(delta, 2)), delta))
    else:
        correction = o0
    return ((((ts * (scale & u64)) & u64) >> (frac & 63)) + correction) & u64


sample = st.tuples(st.integers(0, 1 << 40), st.integers(-(1 << 40), 1 << 40),
                   st.integers(1, 1 << 22), st.integers(0, 22))


@settings(max_examples=300, deadline=None)
@given(samples=st.lists(sample, min_size=1, max_size=6, unique_by=lambda s: s[0]),
       times=st.lists(st.integers(0, 1 << 41), min_size=1, max_size=40),
       flags=st.sampled_from([0, INTERPOLATE]))
def test_column_equals_the_c_function(samples, times, flags):
    samples = sorted(samples)
    shift = TimeShift(1, flags, [np.array(samples, np.int64).T.copy()])
    ts = np.array(times, np.int64)
    got = host_sync(ts, np.zeros(ts.size, np.int32), shift).view(np.uint64).tolist()
    assert got == [_c_host_sync(t, samples, flags) for t in times]


def test_rows_of_cpus_without_samples_keep_their_time():
    shift = TimeShift(1, INTERPOLATE, [np.array([[10], [5], [1], [0]], np.int64)])
    ts = np.array([100, 200, 300], np.int64)
    out = host_sync(ts, np.array([0, 1, 7], np.int32), shift)
    assert out.tolist() == [105, 200, 300]


@pytest.mark.system
def test_sample_is_what_the_script_writes(tmp_path):
    """make_time_shift.py, run again with this machine's trace-cmd, writes the committed
    file and the same `trace-cmd report -t` text."""
    require_binary("trace-cmd")
    subprocess.run([sys.executable, str(REPO / "sample_traces" / "synthetic" /
                                        "make_time_shift.py"), str(tmp_path)],
                   check=True, capture_output=True)
    assert (tmp_path / "time-shift.dat").read_bytes() == SHIFTED.read_bytes()
    assert (tmp_path / "report-t.txt").read_text() == (HERE / "report-t.txt").read_text()
