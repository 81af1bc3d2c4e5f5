"""trace.dat v7 (zstd) and v6 (uncompressed) of the real workload capture: the decoded table
equals the `trace-cmd report` text of the same file, the workload's own counts hold, and
damaged copies fail with the file and offset while intact pages are kept."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kmltrace.errors import KmltraceError

from kmltrace.formats import tracedat
from kmltrace.formats.sniff import parse_file

from tests.conftest import SAMPLES

SAMPLE = SAMPLES / "host-6.18-workload"
V7 = SAMPLE / "trace.dat"
V6 = SAMPLE / "trace-v6.dat"


def workload_counts(events: pl.DataFrame, expected: dict) -> dict[str, int]:
    """The numbers expected.json states, counted from an event table."""
    pid, child = expected["pid"], expected["child_pid"]
    r = {k: (int(v["start"], 16), int(v["end"], 16)) for k, v in expected["ranges"].items()}
    syscalls = expected["expect"]["syscalls"]
    e = events

    def faults(p, rng):
        return e.filter((pl.col("event") == "page_fault_user") & (pl.col("pid") == p)
                        & (pl.col("address") >= rng[0]) & (pl.col("address") < rng[1])).height

    exec_ts = e.filter((pl.col("event") == "sched_process_exec") & (pl.col("pid") == pid)
                       & pl.col("filename").str.ends_with("kmlwork"))["ts_ns"]
    enter = e.filter(pl.col("event") == "sys_enter")
    nr = syscalls["syscall_nr"]
    prctl = enter.filter((pl.col("id") == syscalls["arch_prctl_nr"]) & (pl.col("pid") == pid)
                         & (pl.col("args").list.get(0) == int(syscalls["arch_prctl_code"], 16)))
    prctl_exit = e.filter((pl.col("event") == "sys_exit") & (pl.col("pid") == pid)
                          & (pl.col("id") == syscalls["arch_prctl_nr"])
                          & (pl.col("ts_ns") >= prctl["ts_ns"].min()))
    prints = e.filter(pl.col("event") == "print")
    return {
        "stack": faults(pid, r["stack"]),
        "heap": faults(pid, r["heap"]),
        "child_heap": faults(child, r["child_heap"]),
        "exec": exec_ts.len(),
        "getppid_parent": enter.filter((pl.col("id") == nr) & (pl.col("pid") == pid)
                                       & (pl.col("ts_ns") > exec_ts.min())).height,
        "getppid_child": enter.filter((pl.col("id") == nr) & (pl.col("pid") == child)).height,
        "arch_set_gs": prctl.height,
        "arch_set_gs_ret": prctl_exit["ret"][0],
        "fork": e.filter((pl.col("event") == "sched_process_fork")
                         & (pl.col("child_pid") == child)).height,
        "exit": e.filter((pl.col("event") == "sched_process_exit")
                         & pl.col("pid").is_in([pid, child])).height,
        "markers_parent": prints.filter(pl.col("pid") == pid).height,
        "markers_child": prints.filter(pl.col("pid") == child).height,
    }


def expected_counts(expected: dict) -> dict[str, int]:
    x = expected["expect"]
    pf, sc, pt, mk = x["page_faults_in_range"], x["syscalls"], x["process_tree"], x["markers"]
    value = dict(zip(("stack", "heap", "child_heap"), pf.values()))
    return {
        **value,
        "exec": pt["sched_process_exec filename ending in kmlwork, pid==pid"],
        "getppid_parent": sc["sys_enter id==syscall_nr, pid==pid, after the sched_process_exec of kmlwork"],
        "getppid_child": sc["sys_enter id==syscall_nr, pid==child_pid"],
        "arch_set_gs": sc["sys_enter id==arch_prctl_nr and args[0]==arch_prctl_code, pid==pid"],
        "arch_set_gs_ret": sc["arch_prctl_ret"],
        "fork": pt["sched_process_fork child_pid==child_pid"],
        "exit": pt["sched_process_exit pid in (pid, child_pid)"],
        "markers_parent": mk["ftrace:print (trace_marker) lines from pid"],
        "markers_child": mk["ftrace:print (trace_marker) lines from child_pid"],
    }


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads((SAMPLE / "expected.json").read_text())


@pytest.fixture(scope="module")
def v7():
    return tracedat.parse(V7)


@pytest.fixture(scope="module")
def v6():
    return tracedat.parse(V6)


def test_detected_by_content():
    assert parse_file(V7).format == "tracedat"
    assert parse_file(V6).format == "tracedat"


def test_v7_meta(v7):
    assert v7.errors == []
    assert v7.meta["version"] == 7 and v7.meta["compression"] == "zstd"
    assert v7.meta["clock"] == "local" and v7.meta["precision"] == "ns"
    assert v7.meta["lost_events"] == 0 and v7.meta["cpus"] == 2
    assert v7.meta["kernel"].startswith("6.18")
    assert v7.meta["kallsyms_bytes"] > 100_000          # /proc/kallsyms travels in the file
    assert (v7.events["source"] == "ftrace").all()
    assert v7.events["offset"].is_not_null().all()


def test_v6_equals_v7(v6, v7):
    assert v6.errors == [] and v6.meta["version"] == 6 and v6.meta["compression"] == "none"
    assert v6.events.drop("file", "offset").equals(v7.events.drop("file", "offset"))


def test_workload_counts(v7, expected):
    assert workload_counts(v7.events, expected) == expected_counts(expected)


def _comparable(series: pl.Series) -> pl.Series:
    if isinstance(series.dtype, pl.List):
        return series.list.eval(pl.element().cast(pl.String)).list.join(",")
    return series.cast(pl.String)


@pytest.mark.parametrize("which", ["v7", "v6"])
def test_equals_trace_cmd_report_text(which, request):
    """Same rows, same values as the text parser reads from `trace-cmd report` of the file."""
    from kmltrace.formats import tracecmd_report

    binary = request.getfixturevalue(which).events
    text = tracecmd_report.parse(SAMPLE / "trace-cmd-report.txt").events
    assert text.height == binary.height > 2000
    # the text has microseconds, rounded to nearest (as trace-cmd prints them)
    assert text["ts_ns"].to_list() == ((binary["ts_ns"] + 500) // 1000 * 1000).to_list()
    for column in ("cpu", "pid", "comm", "event", "system"):
        assert text[column].to_list() == binary[column].to_list(), column
    # trace-cmd's sched_switch plugin prints prev_state with its own, older letters (0x20 as
    # X where this kernel's print fmt says Z, no '+' for preemption): the binary follows the
    # kernel's print fmt, which test_ftrace_raw checks against the kernel's own text
    skip = {"file", "line", "offset", "raw", "seq", "flags", "ts_ns", "prev_state"}
    compared = 0
    for column in text.columns:
        if column in skip or column not in binary.columns or column.endswith("_sym"):
            continue
        t, b = _comparable(text[column]), _comparable(binary[column])
        has = t.is_not_null()
        # where the text gives a value, the binary gives the same one
        mismatch = has & (b.is_null() | (t != b))
        assert not mismatch.any(), (column, text.filter(mismatch).head(3))
        compared += int(has.sum())
    assert compared > 10_000


def test_symbolised_text_fields_are_numbers_in_binary(v7):
    # page_fault_kernel's ip is a kernel symbol in the text; the binary keeps the address
    pfk = v7.events.filter(pl.col("event") == "page_fault_kernel")
    if pfk.height:
        assert (pfk["ip"] >= 0xffff800000000000).all()


# -- damage -----------------------------------------------------------------------------------

def _copy(tmp_path: Path, src: Path) -> bytearray:
    return bytearray(src.read_bytes())



def _write(tmp_path: Path, data: bytes, name: str = "broken.dat") -> Path:
    out = tmp_path / name
    out.write_bytes(data)
    return out


def test_unknown_version(tmp_path):
    data = _copy(tmp_path, V6)
    data[10:11] = b"9"
    parsed = parse_file(_write(tmp_path, data))
    assert parsed.events.height == 0
    (err,) = parsed.errors
    assert err.offset == 10 and "unsupported trace.dat version '9'" in err.message
    assert str(err).startswith(str(tmp_path / "broken.dat") + "@0xa: ")


def test_unknown_compression(tmp_path):
    data = _copy(tmp_path, V7)
    at = data.index(b"zstd\0")
    data[at:at + 4] = b"lz4x"
    (err,) = parse_file(_write(tmp_path, data)).errors
    assert "unknown trace.dat compression 'lz4x'" in err.message and err.path.endswith("broken.dat")


def test_truncated_file_keeps_intact_pages(tmp_path, v6):
    data = V6.read_bytes()
    offsets = v6.events["offset"]
    # cut in the middle of the last CPU's data: everything before the cut still decodes
    cut = (int(offsets.max()) // 4096) * 4096 - 4096 + 1000
    parsed = tracedat.parse(_write(tmp_path, data[:cut]))
    assert any("truncated" in e.message and e.offset is not None for e in parsed.errors)
    intact = v6.events.filter(pl.col("offset") < cut // 4096 * 4096)
    assert parsed.events.height == intact.height > 0


def test_corrupt_page_header(tmp_path, v6):
    data = bytearray(V6.read_bytes())
    first = int(v6.events["offset"].min()) // 4096 * 4096
    bad_page = first + 4096                      # the second page of the first CPU with data
    data[bad_page + 8:bad_page + 16] = (0x7fff).to_bytes(8, "little")   # commit > page
    parsed = tracedat.parse(_write(tmp_path, data))
    (err,) = parsed.errors
    assert err.offset == bad_page and "corrupt page header" in err.message
    assert parsed.meta["damaged_pages"] == 1
    in_page = v6.events.filter((pl.col("offset") >= bad_page)
                               & (pl.col("offset") < bad_page + 4096)).height
    assert in_page > 0
    assert parsed.events.height == v6.events.height - in_page


def test_format_that_does_not_parse(tmp_path, v6):
    data = bytearray(V6.read_bytes())
    needle = b"field:long ret;\toffset:16;"
    at = data.index(b"name: sys_exit\n")
    at = data.index(needle, at)
    data[at:at + len(needle)] = needle.replace(b"16", b"1x")
    parsed = tracedat.parse(_write(tmp_path, data))
    (err,) = parsed.errors
    assert err.offset is not None and err.path.endswith("broken.dat")
    assert "cannot parse field" in err.message
    # every other event type still decodes; sys_exit records stay as unknown rows with raw text
    sys_exit = v6.events.filter(pl.col("event") == "sys_exit").height
    assert parsed.events.filter(pl.col("event") == "sys_enter").height == \
        v6.events.filter(pl.col("event") == "sys_enter").height
    unknown = parsed.events.filter(pl.col("event").is_null())
    assert unknown.height == sys_exit and unknown["raw"][0].startswith("type=")
    assert parsed.events.height == v6.events.height


def test_truncated_header(tmp_path):
    (err,) = parse_file(_write(tmp_path, V6.read_bytes()[:300])).errors
    assert "truncated" in err.message and err.offset is not None


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), min_size=1, max_size=6))
def test_fuzz_mutated_header(tmp_path_factory, mutations):
    """Damaged metadata (the first 4 KiB: header, options, section table) of the real v7
    file: the parser raises nothing but the project's errors (parse_file would hide a
    traceback as an "internal error", so the parser is called directly) and always ends."""
    data = bytearray(V7.read_bytes())
    for at, value in mutations:
        data[at] = value
    path = tmp_path_factory.mktemp("fuzz") / "fuzz.dat"
    path.write_bytes(data)
    try:
        parsed = tracedat.parse(path)
    except KmltraceError:
        return
    assert all(isinstance(e, KmltraceError) for e in parsed.errors)


def test_corrupt_compressed_chunk_keeps_the_chunks_before(tmp_path, v7):
    """v7 CPU data is a count, then (csize, usize, zstd frame) chunks: a chunk that does not
    decompress ends its CPU's data there; the pages of the chunks before it are decoded."""
    import struct

    info, _, _, _ = tracedat.read(V7)
    (cpu, cpu_offset, _), = [c for b in info.buffers for c in b.cpus if c[2]]
    data = _copy(tmp_path, V7)
    count, = struct.unpack_from("<I", data, cpu_offset)
    csize0, usize0 = struct.unpack_from("<II", data, cpu_offset + 4)
    second = cpu_offset + 4 + 8 + csize0            # the second chunk's header
    assert count >= 2 and data[second + 8:second + 12] == b"\x28\xb5\x2f\xfd"  # zstd magic
    data[second + 8:second + 12] = b"\0\0\0\0"
    parsed = tracedat.parse(_write(tmp_path, data))
    (err,) = parsed.errors
    assert err.offset == second and f"cannot decompress cpu{cpu} chunk" in err.message
    # offsets of compressed data: the CPU's data offset plus the offset in its pages
    kept = v7.events.filter(pl.col("offset") < cpu_offset + usize0)
    assert 0 < kept.height < v7.events.height
    assert parsed.events.height == kept.height
    assert parsed.events["ts_ns"].to_list() == kept["ts_ns"].to_list()
