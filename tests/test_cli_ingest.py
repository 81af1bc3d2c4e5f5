"""`kmltrace ingest` through the command line: good and bad TARGETs together."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from click.testing import CliRunner

from kmltrace.cli import main

SAMPLES = Path(__file__).resolve().parents[1] / "sample_traces"
TRACE = SAMPLES / "host-6.18-textvariants" / "trace.txt"
PIPE = SAMPLES / "host-6.18-textvariants" / "trace_pipe-lost.txt"


def _run(*args):
    result = CliRunner().invoke(main, ["ingest", *map(str, args)])
    return result


def test_ingest_writes_the_event_table(tmp_path):
    out = tmp_path / "events.parquet"
    result = _run(TRACE, "-o", out, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    table = pl.read_parquet(out)
    work = json.loads((TRACE.parent / "workload.json").read_text())
    getppid = table.filter(pl.col("pid") == work["pid"], pl.col("event") == "sys_enter",
                           pl.col("id") == work["getppid_nr"])
    assert getppid.height == work["getppid_calls"]
    assert report["events"] == table.height
    assert report["formats"] == {"ftrace_text": 1}
    assert report["inputs"][0]["precision"] == "us"
    assert table.schema["ts_ns"] == pl.Int64 and table.schema["args"] == pl.List(pl.UInt64)


# synthetic bad inputs (hand-made), beside real traces
def _bad_inputs(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(bytes(range(256)) * 64)
    prose = tmp_path / "notes.txt"
    prose.write_text("Meeting notes\nnothing here looks like a trace\n")
    truncated = tmp_path / "truncated.txt"
    text = TRACE.read_text()
    truncated.write_text(text[: len(text) - 30])      # cut inside the last line
    hostile = tmp_path / "hostile.txt"                 # synthetic hostile comm lines
    hostile.write_text("# tracer: nop\n"
                       "   [bold]-7     [000] ..... 1.000001: sys_exit: NR 1 = 0\n"
                       "   \x1b[31m-8   [000] ..... 1.000002: sys_exit: NR 1 = 0\n"
                       "   \x1b]0;owned\x07 junk that is not a trace line\n")
    return empty, garbage, prose, truncated, hostile


def test_bad_targets_give_one_line_errors_and_the_rest_is_ingested(tmp_path):
    empty, garbage, prose, truncated, hostile = _bad_inputs(tmp_path)
    out = tmp_path / "all.parquet"
    result = _run(empty, TRACE, garbage, prose, truncated, hostile, PIPE, "-o", out, "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    errors = [line for line in result.stderr.splitlines() if line]
    assert all(line.startswith("kmltrace: ") for line in errors)
    assert any(line.startswith(f"kmltrace: {empty}") for line in errors)
    assert any(line.startswith(f"kmltrace: {garbage}:1:") for line in errors)
    assert any(line.startswith(f"kmltrace: {prose}:1:") for line in errors)
    last_line = len(TRACE.read_text().splitlines())
    assert any(line.startswith(f"kmltrace: {truncated}:{last_line}: truncated") for line in errors)
    assert any(line.startswith(f"kmltrace: {hostile}:4:") for line in errors)
    # escape codes of the hostile input never reach the terminal raw
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
    inputs = {Path(i["path"]).name: i for i in report["inputs"]}
    assert inputs["trace.txt"]["events"] > 0 and inputs["trace_pipe-lost.txt"]["lost_events"] > 0
    assert inputs["truncated.txt"]["events"] == inputs["trace.txt"]["events"] - 1
    assert inputs["hostile.txt"]["events"] == 2
    table = pl.read_parquet(out)
    assert set(table["comm"].unique()) >= {"[bold]", "\x1b[31m"}


def test_table_output_without_json(tmp_path):
    result = _run(TRACE, "-o", tmp_path / "e.parquet")
    assert result.exit_code == 0
    assert "ftrace_text" in result.stdout and "µs" in result.stdout


def test_an_interrupt_in_a_callback_prints_nothing():
    # "Exception ignored in ..." with a traceback, for a Ctrl-C that hit a weakref callback
    from types import SimpleNamespace

    from kmltrace import cli
    seen = []
    cli._quiet_interrupts(SimpleNamespace(exc_value=KeyboardInterrupt()), default=seen.append)
    assert seen == []
    other = SimpleNamespace(exc_value=ValueError("a real bug"))
    cli._quiet_interrupts(other, default=seen.append)
    assert seen == [other]
