"""Text traces parsed batch by batch (formats/text_pipeline.TextParse): the batch ends fall
in the middle of ordinary lines and of stack traces, and nothing may change: ``seq`` and
``line`` run on across batches, stack lines join the event above them, bad lines are counted
once, and the workload's own numbers come out as from a whole parse."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from kmltrace.formats import ftrace_text, perf_script, tracecmd_report
from kmltrace.formats.text_pipeline import in_column_order
from tests.formats.workload_counts import WORKLOAD, assert_workload_counts

SAMPLES = Path(__file__).resolve().parents[2] / "sample_traces"


def _batched(module, path, batch_bytes):
    parse = module.text_parse(path, batch_bytes=batch_bytes)
    frames = list(parse.batches())
    return frames, parse


@pytest.mark.parametrize("module, name", [
    (ftrace_text, "trace.txt"), (tracecmd_report, "trace-cmd-report.txt"),
    (perf_script, "perf-script-ns.txt")])
def test_small_batches_give_the_workload_counts_and_global_seq_and_lines(module, name):
    path = WORKLOAD / name
    lines = path.read_bytes().count(b"\n")
    frames, parse = _batched(module, path, 16 * 1024)      # ~150-200 lines a batch
    assert len(frames) > 10
    events = pl.concat(frames, how="diagonal_relaxed")
    assert parse.errors == []
    # seq counts events 0.. across batches; line numbers increase and stay in the file
    assert events["seq"].to_list() == list(range(events.height))
    assert events["line"].is_sorted() and events["line"].n_unique() == events.height
    assert events["line"].max() <= lines
    for before, after in zip(frames, frames[1:]):
        assert after["seq"][0] == before["seq"][-1] + 1
        assert after["line"][0] > before["line"][-1]
    assert_workload_counts(events)
    whole = module.parse(path)
    assert whole.meta == parse.meta
    assert in_column_order(events).equals(whole.events)


def test_a_stack_trace_cut_by_a_batch_end_stays_with_its_event():
    path = SAMPLES / "public-4.x" / "arm32-4.x-function-stacktrace.txt"
    # 200 bytes: every batch ends inside one of the three 6-7 line stack traces
    frames, parse = _batched(ftrace_text, path, 200)
    events = pl.concat(frames, how="diagonal_relaxed")
    stacks = events.filter(pl.col("event") == "kernel_stack")
    assert stacks.height == 3
    assert stacks["stack"][0].splitlines()[0] == "=> ext4_file_getattr+0x14/0xbc"
    assert parse.meta["stack_lines"] == 20
    assert sum(len(s.splitlines()) for s in stacks["stack"]) == 20
    assert parse.errors == []


def test_lost_events_and_bad_lines_are_counted_once_across_batches(tmp_path):
    # synthetic: the real trace_pipe with lost events, and a prose line every ~40 lines
    real = (SAMPLES / "host-6.18-textvariants" / "trace_pipe-lost.txt").read_text()
    lines = real.splitlines(keepends=True)
    bad_at = []
    out = []
    for i, line in enumerate(lines):
        if i % 40 == 39:
            out.append("this is not a trace line\n")
            bad_at.append(len(out))
        out.append(line)
    path = tmp_path / "mixed.txt"
    path.write_text("".join(out))
    frames, parse = _batched(ftrace_text, path, 2048)
    events = pl.concat(frames, how="diagonal_relaxed")
    assert events.height == 493                       # the real file's events
    assert parse.meta["lost_events"] == 96 + 671      # its stats file's overrun counts
    messages = [str(e) for e in parse.errors]
    assert len(bad_at) > 6
    assert messages[:5] == [f"{path}:{n}: not a tracefs trace line: 'this is not a trace line'"
                            for n in bad_at[:5]]
    assert messages[5] == (f"{path}:{bad_at[5]}: {len(bad_at) - 5} more lines are not tracefs "
                           "trace lines (the next one here)")
    assert len(messages) == 6


@pytest.mark.parametrize("batch_bytes", [1, 3, 7, 1 << 20])
def test_read_batches_numbers_lines_across_batches(tmp_path, batch_bytes):
    # synthetic: blank lines, a line longer than a batch, no newline at the end
    path = tmp_path / "lines.txt"
    path.write_bytes(b"a\n\nlonger than a batch\n  \nlast")
    from kmltrace.formats import text_lines
    frames = list(text_lines.read_batches(path, batch_bytes))
    table = pl.concat(frames)
    assert table["line"].to_list() == [1, 2, 3, 4, 5]
    assert table["text"].to_list() == ["a", None, "longer than a batch", "  ", "last"]
    assert all(frame.height for frame in frames)
