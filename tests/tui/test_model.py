"""The TUI's data functions (no Textual) on the synthetic session: expected values follow
from how synthetic.events() is built (400 rows, 10 us apart, even rows pid 100 page faults
on CPU 0, odd rows pid 200 sys_enter on CPU 1, line = row + 12)."""

from __future__ import annotations

import polars as pl
import pytest

from kmltrace.tui import incident_model, model
from tests.tui import synthetic


@pytest.fixture(scope="module")
def events():
    return synthetic.events()


def test_format_and_parse_time():
    assert incident_model.format_ts(1_000_000_000_123) == "1000.000000123"
    assert incident_model.format_ts(None) == ""
    assert model.parse_time("1000.5") == 1_000_500_000_000
    assert model.parse_time("12ns") == 12
    assert model.parse_time("3ms") == 3_000_000
    with pytest.raises(ValueError, match="not a time"):
        model.parse_time("soon")


def test_filter_words_and_sql(events):
    assert model.apply_filter(events, "pid=100").height == 200
    assert model.apply_filter(events, "event=sys_enter cpu=1").height == 200
    assert model.apply_filter(events, "event=sys_enter cpu=0").height == 0
    # rows 0..99 are 1000.000000 .. 1000.000990 s
    assert model.apply_filter(events, "time=..1000.000990").height == 100
    assert model.apply_filter(events, "time=1000.001..1000.001").height == 1
    assert model.apply_filter(events, "vector = 14 and line < 22").height == 5   # rows 0,2,4,6,8
    assert model.apply_filter(events, "") is events


def test_filter_errors_are_values_errors(events):
    with pytest.raises(ValueError, match="pid must be a number"):
        model.apply_filter(events, "pid=abc")
    with pytest.raises(ValueError):
        model.apply_filter(events, "no_such_column > 3")


def test_search_forward_backward(events):
    assert model.search_row(events, "KMLWORK", 0) == 1
    assert model.search_row(events, "kmlwork", 2) == 3
    assert model.search_row(events, "kmlwork", 2, backwards=True) == 1
    assert model.search_row(events, "address=0x399", 0) == 399
    assert model.search_row(events, "[bold]", 0) == 0          # literal, not a pattern
    assert model.search_row(events, "nothing like this", 0) is None


def test_row_at_time(events):
    assert model.row_at_time(events, synthetic.BASE_NS + 25_000) == 3
    assert model.row_at_time(events, 0) == 0
    assert model.row_at_time(events, synthetic.BASE_NS * 2) == 399   # past the end: last


def test_find_event_row(events):
    assert model.find_event_row(events, {"source": "ftrace", "line": 212, "text": "x"}) == 200
    assert model.find_event_row(events, {"source": "trace.txt", "line": 13}) == 1
    assert model.find_event_row(events, {"source": "qemu", "line": 212}) is None
    assert model.find_event_row(events, {"source": "ftrace"}) is None


def test_fault_counts_and_sparkline(events):
    counts = model.fault_counts(events, 4)
    assert set(counts) == {100}                 # only pid 100 faults
    assert sum(counts[100]) == 200
    assert counts[100] == [50, 50, 50, 50]
    assert model.sparkline([0, 1, 8]) == " ▁█"       # the top value fills the cell
    assert model.sparkline([0, 0]) == "▁▁"


def test_timeline_lanes(events):
    span = model.time_span(events)
    assert span == (synthetic.BASE_NS, synthetic.BASE_NS + 399 * 10_000)
    lanes = model.timeline_lanes(events, span[0], span[1] + 1, 40)
    assert [lane.label for lane in lanes] == ["CPU 0", "CPU 1"]
    assert set(lanes[0].pids) == {100}         # CPU 0: pid 100 ran throughout...
    assert set(lanes[0].cells) == {model.who_letter(100)}
    assert set(lanes[0].marks) == {"f"}        # ...faulting in every column
    assert set(lanes[1].pids) == {200}         # CPU 1: pid 200, syscalls only
    assert set(lanes[1].cells) == {model.who_letter(200)}
    assert set(lanes[1].marks) == {" "}
    per_pid = model.timeline_lanes(events, span[0], span[1] + 1, 40, by="pid")
    assert [lane.label for lane in per_pid] == ["pid 100", "pid 200"]
    assert set(per_pid[1].cells) == {"1"}      # pid 200 on CPU 1


def test_incident_filter_and_sort():
    incidents = synthetic.report()["incidents"]
    assert [i["kind"] for i in incident_model.filter_incidents(incidents, "severity=critical,warning")] \
        == ["triple_fault", "fault_storm"]
    assert incident_model.filter_incidents(incidents, "pid=100 kernel") == [incidents[0]]
    assert incident_model.filter_incidents(incidents, "kind=oops") == []
    by_severity = incident_model.sort_incidents(incidents, "severity")
    assert [i["severity"] for i in by_severity] == ["critical", "warning", "info"]
    by_time = incident_model.sort_incidents(incidents, "time")
    assert [i["kind"] for i in by_time] == ["fault_storm", "triple_fault", "kernel_mode_process"]


def test_incident_chain_from_report():
    report = synthetic.report()
    triple = report["incidents"][1]
    chain = incident_model.incident_chain(report, triple)
    assert [e["name"] for e in chain] == ["#PF", "#DF"]
    assert incident_model.chain_ends_in_reset(triple, chain)
    assert incident_model.incident_chain(report, report["incidents"][0]) == []


def test_parquet_target_loads_as_events(tmp_path, events):
    path = tmp_path / "events.parquet"
    events.write_parquet(path)
    loaded = model.load_all([str(path)])
    assert loaded.events.height == 400
    assert loaded.events.filter(pl.col("pid") == 100).height == 200


def test_clip_buckets_keeps_one_image_span(events):
    # 4 buckets of ~1 ms over 1000.000000 .. 1000.003990 s
    values = [50, 50, 50, 50]
    first, last = synthetic.BASE_NS + 1_500_000, synthetic.BASE_NS + 2_500_000
    assert model.clip_buckets(values, events, first, last) == [0, 50, 50, 0]
    assert model.clip_buckets(values, events, None, None) == values


def test_search_finds_fields_of_events_without_raw_text(events):
    """Binary-decoded events keep no raw text: the search looks at their typed fields."""
    bare = events.with_columns(pl.lit(None, dtype=pl.String).alias("raw"))
    row = model.search_row(bare, "address=0x7ffd0000", 0)     # row 0's address (synthetic)
    assert row == 0
    assert model.search_row(bare, "address=0x7ffce000", 0) == 2     # 0x7ffd0000 - 2 pages
