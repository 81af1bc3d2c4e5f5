"""trace.dat timestamps as trace-cmd prints them (formats/tracedat_clock.py), on a real
capture recorded with ``trace-cmd record -C x86-tsc --tsc2nsec`` in a 6.12 guest
(sample_traces/guest-6.12-tracecmd/tsc2nsec.dat: its ring buffer counts TSC cycles). The
reference is the host's ``trace-cmd report`` of the same file; the workload numbers come
from bootwork's own console line (expected.json)."""

from __future__ import annotations

import json
import subprocess

import polars as pl
from hypothesis import given
from hypothesis import strategies as st

from kmltrace.formats import tracecmd_report, tracedat
from kmltrace.formats.tracedat_clock import corrected, mul_shift, strtoll
from tests.conftest import SAMPLES, require_binary

SAMPLE = SAMPLES / "guest-6.12-tracecmd"
EXPECTED = json.loads((SAMPLE / "expected.json").read_text())["tsc2nsec"]


def _rounded_us(ts: pl.Series) -> list[int]:
    # trace-cmd report prints microseconds rounded to nearest
    return ((ts + 500) // 1000 * 1000).to_list()


def _same_as_report(parsed):
    report = tracecmd_report.parse(SAMPLE / "tsc2nsec-report.txt")
    assert report.errors == [] and parsed.errors == []
    ours, theirs = parsed.events, report.events
    assert ours.height == theirs.height > 0
    assert _rounded_us(ours["ts_ns"]) == theirs["ts_ns"].to_list()
    assert ours.select("cpu", "pid", "event").equals(theirs.select("cpu", "pid", "event"))


def test_tsc_counts_become_the_nanoseconds_trace_cmd_prints():
    parsed = tracedat.parse(SAMPLE / "tsc2nsec.dat")
    assert parsed.meta["tsc2nsec"]["shift"] == 31
    assert parsed.meta["times_corrected"] == {"tsc2nsec": True, "offset_ns": 0}
    _same_as_report(parsed)
    # the guest booted a few seconds before: nanoseconds since boot, not ~2.6e9 cycles/s
    assert 1e9 < parsed.events["ts_ns"].min() < 60e9


def test_the_workload_in_converted_time():
    events = tracedat.parse(SAMPLE / "tsc2nsec.dat").events
    own = events.filter(pl.col("pid") == EXPECTED["pid"])
    calls = own.filter(pl.col("event") == "sys_enter", pl.col("id") == EXPECTED["getppid_nr"])
    assert calls.height == EXPECTED["calls"]
    region = int(EXPECTED["region"], 16)
    faults = own.filter(pl.col("event") == "page_fault_user",
                        pl.col("address").is_between(region, region + EXPECTED["pages"] * 4096,
                                                     closed="left"))
    assert faults.height == EXPECTED["pages"]
    assert own["ts_ns"].is_sorted()


def test_version_6_gives_the_same_times(tmp_path):
    require_binary("trace-cmd")
    v6 = tmp_path / "trace-v6.dat"
    subprocess.run(["trace-cmd", "convert", "-i", str(SAMPLE / "tsc2nsec.dat"), "-o", str(v6),
                    "--file-version", "6", "--compression", "none"], check=True,
                   capture_output=True)
    parsed = tracedat.parse(v6)
    assert parsed.meta["version"] == 6 and parsed.meta["times_corrected"]["tsc2nsec"]
    _same_as_report(parsed)


def test_strtoll_reads_numbers_as_c_does():
    assert [strtoll(t) for t in ("0x10", "010", "-5", "12abc", "", " +7", "0", "x1", "-0x2")] \
        == [16, 8, -5, 12, 0, 7, 0, 0, -2]
    # out of range: saturated, as strtoll does
    assert strtoll("0x" + "f" * 40) == (1 << 63) - 1 and strtoll("-" + "9" * 30) == -(1 << 63)


def test_offset_and_date_options_are_added():
    ts = pl.Series("ts_ns", [0, 1_000], dtype=pl.Int64)
    options = {"ts_offsets": ["100", "0x10"], "dates": ["0x2"]}     # + 116 ns + 2 us
    out = pl.select(corrected(pl.lit(ts), options)).to_series()
    assert out.to_list() == [2116, 3116]
    assert corrected(pl.col("ts_ns"), {}) is None
    # a hostile DATE option: no exception (the sum stays a 64-bit number)
    huge = {"dates": ["0x" + "f" * 40], "ts_offsets": ["0x" + "f" * 40]}
    assert pl.select(corrected(pl.lit(ts), huge)).to_series().dtype == pl.Int64
    # a TSC2NSEC option that cannot be applied leaves the times alone
    assert corrected(pl.col("ts_ns"), {"tsc2nsec": {"mult": 0, "shift": 3, "offset": 0}}) is None


@st.composite
def _products(draw):
    """(ts, mult, shift) whose exact result fits in 63 bits, as real clocks give."""
    shift = draw(st.integers(0, 63))
    mult = draw(st.integers(1, (1 << 32) - 1))
    largest = min((1 << 63) - 1, (((1 << 63) - 1) << shift) // mult)
    ts = draw(st.one_of(st.integers(0, largest), st.sampled_from([0, 1, largest])))
    return ts, mult, shift


@given(_products())
def test_mul_shift_is_the_exact_128_bit_product(case):
    ts, mult, shift = case
    exact = (ts * mult) >> shift
    assert exact < 1 << 63
    got = pl.select(mul_shift(pl.lit(ts, dtype=pl.Int64), mult, shift)).item()
    assert got == exact
