"""Function-tracer lines (``func <-parent``) of a real 6.12 kernel: sample_traces/
guest-6.12-function (Debian's kernel under QEMU TCG; this host refuses the function tracer in
an instance), and trace-cmd's function events (guest-6.12-tracecmd: function.dat and its
three ``trace-cmd report`` printings). The expected numbers come from bootwork's own console
line (expected.json: PAGES pages touched in its region, CALLS getppid() calls) and from
counting the text's lines with a plain regex, never from kmltrace."""

from __future__ import annotations

import json
import re

import polars as pl
import pytest

from kmltrace.formats import ftrace_raw, ftrace_text, tracecmd_report, tracedat
from kmltrace.symbols.readers import read_kallsyms_text
from tests.conftest import SAMPLES

SAMPLE = SAMPLES / "guest-6.12-function"
EXPECTED = json.loads((SAMPLE / "expected.json").read_text())
PID = EXPECTED["pid"]


def _own(events: pl.DataFrame) -> pl.DataFrame:
    return events.filter(pl.col("pid") == PID).sort("seq")


@pytest.fixture(scope="module")
def text() -> pl.DataFrame:
    parsed = ftrace_text.parse(SAMPLE / "trace.txt")
    assert parsed.errors == []
    assert parsed.meta["tracer"] == "function" and parsed.meta["lost_events"] == 0
    return parsed.events


def _function_lines(name: str, pid: int) -> list[tuple[str, str]]:
    """(function, parent) of every function line of `pid`, by a plain regex on the text."""
    line = re.compile(rf"^\s*.+-{pid}\s+\[\d+\] \S+\s+[\d.]+: (\S+) <-(\S+)$")
    return [m.groups() for m in map(line.match, (SAMPLE / name).read_text().splitlines()) if m]


def test_every_getppid_call_is_a_function_row(text):
    own = _own(text)
    calls = own.filter(pl.col("event") == "function", pl.col("ip_sym") == "__do_sys_getppid")
    assert calls.height == EXPECTED["calls"]
    assert calls["parent_ip_sym"].unique().to_list() == ["do_syscall_64"]
    assert calls["system"].unique().to_list() == ["ftrace"]
    # the %ps fields printed as symbols: the address columns stay null
    assert calls["ip"].null_count() == calls["parent_ip"].null_count() == calls.height
    entered = own.filter(pl.col("event") == "sys_enter", pl.col("id") == EXPECTED["getppid_nr"])
    assert entered.height == EXPECTED["calls"]


def test_each_fault_in_the_region_is_followed_by_handle_mm_fault(text):
    """bootwork touches PAGES fresh pages: PAGES page_fault_user rows in its region, each
    followed (same task) by the function line of the fault's handle_mm_fault call."""
    own = _own(text).with_columns(pl.col("event").shift(-1).alias("next_event"),
                                  pl.col("ip_sym").shift(-1).alias("next_ip_sym"),
                                  pl.col("parent_ip_sym").shift(-1).alias("next_parent"))
    region = int(EXPECTED["region"], 16)
    faults = own.filter(pl.col("event") == "page_fault_user",
                        pl.col("address").is_between(region, region + EXPECTED["pages"] * 4096,
                                                     closed="left"))
    assert faults.height == EXPECTED["pages"]
    assert faults.select("next_event", "next_ip_sym", "next_parent").unique().rows() == [
        ("function", "handle_mm_fault", "do_user_addr_fault")]


def test_function_rows_match_the_lines(text):
    """Every function line of the workload's task is a row, in order, with its two symbols."""
    own = _own(text).filter(pl.col("event") == "function")
    lines = _function_lines("trace.txt", PID)
    assert len(lines) > EXPECTED["calls"] + EXPECTED["pages"]
    assert own.select("ip_sym", "parent_ip_sym").rows() == lines


def test_sym_offset_text_gives_the_same_rows(text):
    """The same buffer read again with options/sym-offset: the symbols carry +off/size."""
    parsed = ftrace_text.parse(SAMPLE / "trace-sym-offset.txt")
    assert parsed.errors == []
    other = parsed.events
    assert other.height == text.height
    assert other.select("ts_ns", "pid", "event").equals(text.select("ts_ns", "pid", "event"))
    functions = other.filter(pl.col("event") == "function")
    assert functions["ip_sym"].str.contains(r"^\w+\+0x[0-9a-f]+/0x[0-9a-f]+$").all()
    bare = functions["ip_sym"].str.replace(r"\+.*", "")
    assert bare.to_list() == text.filter(pl.col("event") == "function")["ip_sym"].to_list()
    own = functions.filter(pl.col("pid") == PID)
    assert own.select("ip_sym", "parent_ip_sym").rows() == _function_lines(
        "trace-sym-offset.txt", PID)


def test_raw_pages_give_the_text_events(text):
    """The instance's raw pages (read after the text): the same events; function rows carry
    the addresses the text printed as symbols, one address per symbol."""
    raw = ftrace_raw.parse_dir(SAMPLE / "ftrace")
    assert raw.errors == []
    events = raw.events
    assert events.height == text.height
    # tracefs prints microseconds rounded to nearest
    assert text["ts_ns"].to_list() == ((events["ts_ns"] + 500) // 1000 * 1000).to_list()
    assert events.select("cpu", "pid", "event").equals(text.select("cpu", "pid", "event"))
    pairs = pl.DataFrame({"ip": events["ip"], "sym": text["ip_sym"]}).filter(
        text["event"] == "function").unique()
    assert pairs["ip"].null_count() == 0
    assert pairs["ip"].n_unique() == pairs["sym"].n_unique() == pairs.height
    # kernel text addresses (x86_64: the top 2 GiB)
    assert (pairs["ip"] >= 0xFFFFFFFF80000000).all()


# -- the same kind of trace recorded by trace-cmd (sample_traces/guest-6.12-tracecmd) ----------

TRACECMD = SAMPLES / "guest-6.12-tracecmd"
RECORDED = json.loads((TRACECMD / "expected.json").read_text())["function"]


@pytest.fixture(scope="module")
def recorded():
    parsed = tracedat.parse(TRACECMD / "function.dat")
    assert parsed.errors == []
    return parsed


@pytest.mark.parametrize("name, with_parent", [
    ("function-report.txt", False),            # "function: x64_sys_call"
    ("function-report-parent.txt", True),      # "... x64_sys_call <-- do_syscall_64"
    ("function-report-R.txt", True),           # "... ip=x64_sys_call parent_ip=do_syscall_64"
])
def test_trace_cmd_report_function_lines(recorded, name, with_parent):
    """The three ways trace-cmd report prints a function event give the symbols; the
    trace.dat's own rows carry the addresses, which its kallsyms names the same way."""
    parsed = tracecmd_report.parse(TRACECMD / name)
    assert parsed.errors == []
    text = parsed.events
    assert text.select("pid", "event").equals(recorded.events.select("pid", "event"))
    functions = text.filter(pl.col("event") == "function")
    assert functions["ip_sym"].null_count() == 0
    own = functions.filter(pl.col("pid") == RECORDED["pid"])
    assert own.filter(pl.col("ip_sym") == "__do_sys_getppid").height == RECORDED["calls"]
    if with_parent:
        assert own.filter(pl.col("ip_sym") == "__do_sys_getppid")["parent_ip_sym"] \
            .unique().to_list() == ["do_syscall_64"]
    else:
        assert "parent_ip_sym" not in functions.columns or \
            functions["parent_ip_sym"].null_count() == functions.height
    # the binary rows' addresses, named by the file's own kallsyms
    table = read_kallsyms_text(recorded.meta["kallsyms_text"])
    binary = recorded.events.filter(pl.col("event") == "function")
    assert table.lookup(binary["ip"].to_numpy())["symbol"].to_list() == \
        functions["ip_sym"].to_list()
    if with_parent:
        assert table.lookup(binary["parent_ip"].to_numpy())["symbol"].to_list() == \
            functions["parent_ip_sym"].to_list()
