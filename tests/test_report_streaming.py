"""`kmltrace report` on a parquet event table (``kmltrace ingest`` output) through polars'
streaming engine: the same report as in memory, and a report under a memory limit that
reading the table whole does not fit in."""

import json
import os
import subprocess
import sys
import textwrap

import polars as pl
import pytest
from click.testing import CliRunner

from kmltrace.cli import main
from tests.conftest import SAMPLES

CAPTURES = [SAMPLES / "host-6.18-workload" / "bundle", SAMPLES / "host-6.18-system" / "bundle",
            SAMPLES / "synthetic" / "kml-workload"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def ingest(capture, out):
    result = run("ingest", capture, "-o", out)
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: p.parent.name + "/" + p.name)
def test_streaming_report_equals_the_in_memory_report(capture, tmp_path):
    table = ingest(capture, tmp_path / "events.parquet")
    in_memory = run("report", table, "--json")
    streamed = run("report", table, "--json", "--streaming")
    assert in_memory.exit_code == 0 and streamed.exit_code == 0, streamed.output
    assert streamed.stdout == in_memory.stdout
    report = json.loads(streamed.stdout)
    # the table was analysed, not skipped: its events counted, its processes and faults found
    events = pl.scan_parquet(table).select(pl.len()).collect().item()
    faults = (pl.scan_parquet(table).filter(pl.col("event").str.starts_with("page_fault"))
              .select(pl.len()).collect().item())
    assert report["inputs"] == [{"path": str(table), "format": "parquet", "events": events,
                                 "errors": []}]
    assert report["processes"]
    assert sum(p["page_faults"] for p in report["processes"]) == faults


def test_kml_facts_survive_the_streaming_path(tmp_path):
    """The synthetic KML capture's changed faults (U/S bit clear) still make its process
    kernel-mode when its ingested table is streamed."""
    table = ingest(SAMPLES / "synthetic" / "kml-workload", tmp_path / "kml.parquet")
    report = json.loads(run("report", table, "--json", "--streaming").stdout)
    kernel = [p for p in report["processes"] if p["mode"] == "kernel"]
    assert [(p["comm"], p["pid"]) for p in kernel] == [("kmlwork", 22998)]


#: copies of the workload capture in the large table (2802 events each: 5.6 M rows)
COPIES = 2000
#: address-space limit of the child (MiB): the streamed report fits (it peaks near 2.4 GiB of
#: address space, ~0.7 GB resident), reading the 5.6 M x 48 table whole does not
LIMIT_MB = 3000

CHILD = textwrap.dedent("""
    import resource, sys
    limit = int(sys.argv[1]) << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if sys.argv[2] == "eager":
        import polars as pl
        frame = pl.read_parquet(sys.argv[3])
        print("read", frame.height)
    else:
        from kmltrace.cli import main
        main(["report", sys.argv[3], "--json", *sys.argv[4:]])
""")


def replicate(table, out, copies):
    """`copies` of `table` one after another in time, pids moved per copy (as a longer run of
    more processes), rows renumbered: an event table as `kmltrace ingest` writes it."""
    base = pl.read_parquet(table)
    pids = [c for c in ("pid", "tgid", "prev_pid", "next_pid", "parent_pid", "child_pid",
                        "old_pid", "target_pid", "task_pid") if c in base.columns]
    span = base["ts_ns"].max() - base["ts_ns"].min() + 1_000_000_000
    frames = [base.lazy().with_columns(
        pl.col("ts_ns") + k * span,
        *[pl.when(pl.col(c) > 0).then(pl.col(c) + k * 100_000).otherwise(pl.col(c))
          .cast(base.schema[c]).alias(c) for c in pids]) for k in range(copies)]
    (pl.concat(frames).with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("row"))
     .sink_parquet(out))
    return base


def limited(*args):
    # a fixed thread count: the address space a process reserves grows with its threads
    env = {**os.environ, "POLARS_MAX_THREADS": "2", "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", CHILD, str(LIMIT_MB), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)


def test_a_table_larger_than_the_memory_limit_is_reported_by_streaming(tmp_path):
    small = ingest(SAMPLES / "host-6.18-workload" / "bundle", tmp_path / "workload.parquet")
    table = tmp_path / "large.parquet"
    base = replicate(small, table, COPIES)
    rows = pl.scan_parquet(table).select(pl.len()).collect().item()
    assert rows == COPIES * base.height
    # under the limit the table cannot be read whole ...
    eager = limited("eager", table)
    assert eager.returncode != 0 and "read" not in eager.stdout, eager.stdout
    # ... and the report is made anyway: chosen by itself (too large for the limit) and forced
    for flags in ([], ["--streaming"]):
        streamed = limited("report", table, *flags)
        assert streamed.returncode == 0, streamed.stderr[-2000:]
        report = json.loads(streamed.stdout)
        assert report["inputs"][0]["events"] == rows
        # every copy's processes and faults, counted from the source table
        faults = (pl.scan_parquet(table).filter(pl.col("event").str.starts_with("page_fault"))
                  .select(pl.len()).collect().item())
        assert sum(p["page_faults"] for p in report["processes"]) == faults
        base_images = base.filter(pl.col("task_pid") > 0).select("task_pid", "image").unique()
        assert len(report["processes"]) >= COPIES * base_images.height
        assert not [p for p in report["processes"] if p["mode"] == "kernel"]


def test_a_damaged_or_foreign_parquet_target_is_one_error_line(tmp_path):
    table = ingest(SAMPLES / "host-6.18-workload" / "bundle", tmp_path / "events.parquet")
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(table.read_bytes()[: table.stat().st_size // 2])
    foreign = tmp_path / "foreign.parquet"
    pl.DataFrame({"x": [1, 2]}).write_parquet(foreign)
    for bad, says in ((cut, "unreadable parquet event table"), (foreign, "no column 'event'")):
        result = run("report", bad, "--json")
        assert result.exit_code == 1
        assert "Traceback" not in result.output
        report = json.loads(result.stdout)
        assert report["inputs"][0]["format"] == "parquet"
        assert says in report["inputs"][0]["errors"][0]
