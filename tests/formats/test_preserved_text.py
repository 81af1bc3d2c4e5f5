"""The kernel's text of a boot-mapped instance's previous boot (6.12): numbers print as
``name=0x21 (33)``, sys_enter's args as ``<INVALID-SIZE>``, comms as ``<...>``
(formats/fields.py "hexdec" entries). Real data: trace.txt of
sample_traces/last-boot-6.12-triple-fault, whose workload (PROVENANCE.md) is pid 149: 100
getppid() calls and 48 page faults in its region, then write(2) to /proc/sysrq-trigger."""

from __future__ import annotations

import polars as pl

from kmltrace.formats.ftrace_raw import parse_dir
from kmltrace.formats.sniff import parse_file
from tests.conftest import SAMPLES

BUNDLE = SAMPLES / "last-boot-6.12-triple-fault"
PID, REGION, PAGES, CALLS = 149, 0x7F9CC4A2F000, 48, 100


def test_preserved_text_fields():
    parsed = parse_file(BUNDLE / "trace.txt")
    assert parsed.format == "ftrace_text" and not parsed.errors
    work = parsed.events.filter(pl.col("pid") == PID)
    assert work.filter((pl.col("event") == "sys_enter") & (pl.col("id") == 110)).height == CALLS
    assert work.filter((pl.col("event") == "sys_exit") & (pl.col("id") == 110)).height == CALLS
    in_region = (pl.col("address") >= REGION) & (pl.col("address") < REGION + PAGES * 4096)
    assert work.filter((pl.col("event") == "page_fault_user") & in_region).height == PAGES
    last = work.filter(pl.col("event").is_in(["sys_enter", "sys_exit"])).row(-1, named=True)
    assert (last["event"], last["id"]) == ("sys_enter", 1)
    # "vector=0xec (236)" is the local timer, not vector 0
    timer = parsed.events.filter(pl.col("event") == "local_timer_entry")
    assert timer.height and set(timer.get_column("vector")) == {0xEC}


def test_preserved_text_agrees_with_raw_pages():
    """Same events, same typed fields, from the text and from the raw pages."""
    text = parse_file(BUNDLE / "trace.txt").events
    raw = parse_dir(BUNDLE / "ftrace").events
    fields = ["pid", "event", "id", "ret", "address", "ip", "error_code", "vector",
              "prev_pid", "next_pid"]
    cols = ["cpu"] + [c for c in fields if c in text.columns and c in raw.columns]
    # per CPU in recorded order (the text is merged by time, microseconds rounded)
    a = text.sort("cpu", maintain_order=True)
    b = raw.sort("cpu", maintain_order=True)
    assert a.height == b.height
    assert a.select(cols).equals(b.select(cols))
    assert (a.get_column("ts_ns") - b.get_column("ts_ns")).abs().max() <= 1000
