"""``kmltrace ingest`` of one text trace, streamed batch by batch to parquet
(kmltrace/ingest_stream.py): the file must hold what the whole-table path writes."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from kmltrace import ingest_stream
from kmltrace.analysis.events import merged_events
from kmltrace.capture import load
from kmltrace.cli import main
from kmltrace.event_file import output_schema, to_output_schema
from kmltrace.formats import ftrace_text, perf_script, tracecmd_report
from kmltrace.formats import text_lines
from tests.formats.workload_counts import WORKLOAD, assert_workload_counts, expected

SAMPLES = Path(__file__).resolve().parents[1] / "sample_traces"


def _whole(path: Path) -> pl.DataFrame:
    """What the whole-table path writes for `path`: the merge, in the event file's columns."""
    return to_output_schema(merged_events(load([path])).collect())


@pytest.mark.parametrize("module, path", [
    (ftrace_text, WORKLOAD / "trace.txt"),
    (tracecmd_report, WORKLOAD / "trace-cmd-report.txt"),
    (perf_script, WORKLOAD / "perf-script.txt"),
    # lost-event rows (no time, no pid) go after every timed row, as in the merge
    (ftrace_text, SAMPLES / "host-6.18-textvariants" / "trace_pipe-lost.txt")])
def test_streamed_table_equals_the_merged_one(tmp_path, module, path):
    out = tmp_path / "events.parquet"
    parsed = ingest_stream.ingest_text(path, module, out, batch_bytes=8 * 1024)
    streamed = pl.read_parquet(out)
    whole = _whole(path)
    assert parsed.count == streamed.height == whole.height
    assert streamed.columns == whole.columns
    assert streamed.equals(whole)
    assert streamed.schema == output_schema()
    assert streamed["row"].to_list() == list(range(streamed.height))
    assert not list(tmp_path.glob(".*"))        # the temporary file is gone


def test_image_counts_execs_across_batches(tmp_path):
    # the workload's pid runs sh, then execs kmlwork (expected.json): image 0, then 1
    out = tmp_path / "events.parquet"
    ingest_stream.ingest_text(WORKLOAD / "trace.txt", ftrace_text, out, batch_bytes=4096)
    table = pl.read_parquet(out)
    pid = expected()["pid"]
    own = table.filter(pl.col("task_pid") == pid)
    exec_row = own.filter(pl.col("event") == "sched_process_exec",
                          pl.col("filename").str.ends_with("kmlwork"))["row"][0]
    assert own.filter(pl.col("row") < exec_row)["image"].unique().to_list() == [0]
    assert own.filter(pl.col("row") >= exec_row)["image"].unique().to_list() == [1]
    assert_workload_counts(table)


def test_times_going_backwards_need_the_whole_table(tmp_path):
    # a public 4.x excerpt whose lines are not in time order
    path = SAMPLES / "public-4.x" / "lkml-v5.8-seccomp-getppid.txt"
    with pytest.raises(ingest_stream.NeedsWholeTable):
        ingest_stream.ingest_text(path, ftrace_text, tmp_path / "e.parquet")
    assert not (tmp_path / "e.parquet").exists()
    # the verb falls back to the merge and writes the sorted table
    out = tmp_path / "cli.parquet"
    result = CliRunner().invoke(main, ["ingest", str(path), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert pl.read_parquet(out).equals(_whole(path))


def test_cli_streams_with_small_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(text_lines, "BATCH_BYTES", 8 * 1024)
    path = WORKLOAD / "perf-script-ns.txt"
    out = tmp_path / "events.parquet"
    result = CliRunner().invoke(main, ["ingest", str(path), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    table = pl.read_parquet(out)
    assert report["events"] == table.height == report["inputs"][0]["events"]
    assert report["inputs"][0]["precision"] == "ns"
    assert_workload_counts(table)
    assert table.equals(_whole(path))


def test_a_text_the_reader_refuses_is_reported_by_the_whole_path(tmp_path):
    # synthetic: a trace line behind zstd's magic bytes (polars' reader refuses the file)
    path = tmp_path / "zstd-magic.txt"
    path.write_bytes(b"\x28\xb5\x2f\xfd# tracer: nop\n"
                     b"              sh-1   [000] .....   1.000001: sys_exit: NR 1 = 0\n")
    out = tmp_path / "events.parquet"
    result = CliRunner().invoke(main, ["ingest", str(path), "-o", str(out), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["events"] == 0
    assert len(report["errors"]) == 1 and "cannot read as text lines" in report["errors"][0]
    assert result.stderr.count("\n") == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_an_interrupt_leaves_no_file(tmp_path, monkeypatch):
    # Ctrl-C while the sink runs (polars ends it with KeyboardInterrupt): no temporary file,
    # and an output written before stays as it was
    out = tmp_path / "events.parquet"
    out.write_bytes(b"written before")
    batches = ingest_stream._attributed_batches

    def interrupted(parse):
        for number, batch in enumerate(batches(parse)):
            if number == 2:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(ingest_stream, "_attributed_batches", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ingest_stream.ingest_text(WORKLOAD / "trace.txt", ftrace_text, out,
                                  batch_bytes=8 * 1024)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.parquet"]
    assert out.read_bytes() == b"written before"


def test_a_column_the_file_has_no_place_for_needs_the_whole_table(tmp_path, monkeypatch):
    # the streamed file's columns are fixed before the first batch: a batch with another
    # column (simulated: an event file schema without `raw`) sends the trace to the merge
    schema = ingest_stream.output_schema()
    narrower = pl.Schema({n: t for n, t in schema.items() if n != "raw"})
    monkeypatch.setattr(ingest_stream, "output_schema", lambda: narrower)
    out = tmp_path / "events.parquet"
    with pytest.raises(ingest_stream.NeedsWholeTable, match="raw"):
        ingest_stream.ingest_text(WORKLOAD / "trace.txt", ftrace_text, out)
    assert list(tmp_path.iterdir()) == []
