"""The parquet file ``kmltrace ingest`` writes (kmltrace/event_file.py): the same columns for
every capture, a source's own columns kept before the attribution ones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from kmltrace.cli import main
from kmltrace.event_file import ATTRIBUTION, beside, output_schema, to_output_schema
from kmltrace.formats import fields
from kmltrace.schema import CORE_COLUMNS

SAMPLES = Path(__file__).resolve().parents[1] / "sample_traces"


def _ingest(tmp_path: Path, *targets: Path) -> pl.DataFrame:
    out = tmp_path / "events.parquet"
    result = CliRunner().invoke(main, ["ingest", *map(str, targets), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    return pl.read_parquet(out)


def test_the_schema_holds_core_fields_then_attribution():
    schema = output_schema()
    names = list(schema)
    assert names[:len(CORE_COLUMNS)] == list(CORE_COLUMNS)
    assert names[-len(ATTRIBUTION):] == list(ATTRIBUTION)
    assert set(fields.field_table_schema()) <= set(names)
    assert schema["args"] == pl.List(pl.UInt64) and schema["ip_sym"] == pl.String


def test_captures_of_different_events_share_one_schema(tmp_path):
    # a streamed text (6.18 host), an old kernel's excerpt (4.x, raw syscalls only) and a
    # trace.dat (whole-table path): the same columns, in the same order
    text = _ingest(tmp_path, SAMPLES / "host-6.18-workload" / "trace.txt")
    old = _ingest(tmp_path, SAMPLES / "public-4.x" / "android-arm64-4.x-raw_syscalls.txt")
    binary = _ingest(tmp_path, SAMPLES / "host-6.18-workload" / "trace.dat")
    assert text.schema == old.schema == binary.schema == output_schema()
    # the 4.x excerpt has no page faults: its fault columns are there, all null
    assert old["address"].null_count() == old.height > 0
    assert text["address"].null_count() < text.height


def test_a_sources_own_columns_stay_before_the_attribution(tmp_path):
    log = SAMPLES / "lab-starvation-tcg" / "qemu.log"
    table = _ingest(tmp_path, log)
    names = table.columns
    assert names[:len(output_schema()) - len(ATTRIBUTION)] == [
        n for n in output_schema() if n not in ATTRIBUTION]
    assert names[-len(ATTRIBUTION):] == list(ATTRIBUTION)
    # QEMU's register dump columns, with values
    assert {"cs", "rip", "cr2", "in_asm"} <= set(names)
    assert table["rip"].null_count() < table.height


def test_to_output_schema_casts_and_fills():
    # synthetic: a two-row frame with a narrower dtype and an own column
    frame = pl.DataFrame({"ts_ns": [1, 2], "pid": pl.Series([7, 8], dtype=pl.Int64),
                          "mine": ["a", "b"], "row": [0, 1]})
    out = to_output_schema(frame)
    assert out.height == 2
    assert out.schema["pid"] == pl.Int32 and out["pid"].to_list() == [7, 8]
    assert out["args"].to_list() == [None, None]
    assert out.columns[-len(ATTRIBUTION) - 1] == "mine"
    assert out["row"].to_list() == [0, 1] and out["image"].to_list() == [None, None]
    # the cached null columns serve a longer frame too
    long = to_output_schema(pl.DataFrame({"ts_ns": list(range(70000))}))
    assert long["comm"].null_count() == 70000


def test_beside_removes_its_file_on_an_error(tmp_path):
    out = tmp_path / "events.parquet"
    with pytest.raises(RuntimeError):
        with beside(out) as tmp:
            tmp.write_bytes(b"half a file")
            raise RuntimeError("the write failed")
    assert list(tmp_path.iterdir()) == []


def test_beside_removes_its_file_at_exit_when_the_clean_up_is_cut_short(tmp_path):
    # a second KeyboardInterrupt that lands inside the clean-up (simulated: the first
    # unlink raises it) must still leave no temporary file once the process has ended
    out = tmp_path / "events.parquet"
    script = f"""
import pathlib
from kmltrace.event_file import beside
unlink = pathlib.Path.unlink
def interrupted(self, missing_ok=False):
    pathlib.Path.unlink = unlink
    raise KeyboardInterrupt
with beside(pathlib.Path({str(out)!r})) as tmp:
    tmp.write_bytes(b"half a file")
    pathlib.Path.unlink = interrupted
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode != 0 and "KeyboardInterrupt" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_whole_table_writer_places_columns_as_to_output_schema(tmp_path):
    # write_event_file streams the table with the absent columns as literals; the file must
    # hold what to_output_schema gives (a QEMU log: a source with columns of its own)
    from kmltrace.analysis.events import merged_events
    from kmltrace.capture import load
    from kmltrace.event_file import write_event_file

    table = merged_events(load([SAMPLES / "lab-starvation-tcg" / "qemu.log"])).collect()
    out = tmp_path / "events.parquet"
    write_event_file(table, out)
    assert pl.read_parquet(out).equals(to_output_schema(table))
    assert [p.name for p in tmp_path.iterdir()] == ["events.parquet"]
