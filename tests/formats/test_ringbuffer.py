"""Ring-buffer page decoding on SYNTHETIC pages built here byte by byte, following the kernel's
layout (kernel/trace/ring_buffer.c), so every record kind and every kind of damage is covered.
The real-capture checks are in test_tracedat.py and test_ftrace_raw.py."""

from __future__ import annotations

import os
import struct

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings, HealthCheck
from hypothesis import strategies as st

from kmltrace.errors import KmltraceError
from kmltrace.formats.event_format import PageHeader, parse_format
from kmltrace.formats.raw_text import with_raw_text
from kmltrace.formats.ringbuffer import (RB_MISSED_EVENTS, RB_MISSED_STORED, CpuSegment,
                                        decode, hex_strings)

PAGE = 4096
HEADER = PageHeader()          # 6.x x86-64: u64 timestamp, 8-byte commit, data at 16


@pytest.fixture(scope="module", autouse=True, params=["accelerated", "pure"])
def decoder_path(request):
    """Every test here runs on both paths: the C accelerator (when built) and the pure numpy
    one (KMLTRACE_PURE=1), the reference. Module-scoped (hypothesis tests take no
    function-scoped fixtures), so the variable is set and restored by hand."""
    before = os.environ.get("KMLTRACE_PURE")
    os.environ["KMLTRACE_PURE"] = "1" if request.param == "pure" else "0"
    yield request.param
    if before is None:
        os.environ.pop("KMLTRACE_PURE", None)
    else:
        os.environ["KMLTRACE_PURE"] = before

# SYNTHETIC format texts, in the kernel's format-file syntax (sys_enter copied from 6.18)
SYS_ENTER = """name: sys_enter
ID: 443
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:long id;\toffset:8;\tsize:8;\tsigned:1;
\tfield:unsigned long args[6];\toffset:16;\tsize:48;\tsigned:0;

print fmt: "NR %ld (%lx, %lx, %lx, %lx, %lx, %lx)", REC->id, REC->args[0]
"""
STRINGS = """name: strings_test
ID: 900
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:__data_loc char[] name;\toffset:8;\tsize:4;\tsigned:0;
\tfield:__rel_loc char[] rel;\toffset:12;\tsize:4;\tsigned:0;
\tfield:char comm[16];\toffset:16;\tsize:16;\tsigned:0;
\tfield:char buf[];\toffset:32;\tsize:0;\tsigned:0;

print fmt: "%s", __get_str(name)
"""


def _formats():
    out = {}
    for text, system in ((SYS_ENTER, "raw_syscalls"), (STRINGS, "test")):
        f = parse_format(text, system=system)
        out[f.id] = f
    return out


def sys_enter(pid: int, nr: int, args=(0, 0, 0, 0, 0, 0), flags=0, preempt=0) -> bytes:
    return struct.pack("<HBBiq6Q", 443, flags, preempt, pid, nr, *args)


def data_record(delta: int, payload: bytes) -> bytes:
    """type_len 1..28: the header word then the payload padded to whole words."""
    words = (len(payload) + 3) // 4
    assert 1 <= words <= 28
    return struct.pack("<I", words | (delta << 5)) + payload.ljust(words * 4, b"\0")


def long_record(delta: int, payload: bytes) -> bytes:
    """type_len 0: the header word, the length word (payload + 4), the payload."""
    padded = payload.ljust((len(payload) + 3) // 4 * 4, b"\0")
    return struct.pack("<II", 0 | (delta << 5), len(padded) + 4) + padded


def time_extend(delta: int) -> bytes:
    return struct.pack("<II", 30 | ((delta & ((1 << 27) - 1)) << 5), delta >> 27)


def abs_stamp(ts: int) -> bytes:
    return struct.pack("<II", 31 | ((ts & ((1 << 27) - 1)) << 5), ts >> 27)


def padding(delta: int, nbytes: int) -> bytes:
    """type_len 29: the length word counts itself and the `nbytes` after it."""
    return struct.pack("<II", 29 | (delta << 5), nbytes + 4) + b"\0" * nbytes


def page(ts: int, records: list[bytes], commit_flags: int = 0, missed: int | None = None,
         commit: int | None = None) -> bytes:
    data = b"".join(records)
    length = len(data) if commit is None else commit
    body = data + (struct.pack("<Q", missed) if missed is not None else b"")
    out = struct.pack("<QQ", ts, length | commit_flags) + body
    assert len(out) <= PAGE
    return out.ljust(PAGE, b"\0")


def run(cpu_pages: dict[int, list[bytes]], cmdlines=None):
    blobs, segments, pos = [], [], 0
    for cpu, pages in cpu_pages.items():
        blob = b"".join(pages)
        blobs.append(blob)
        segments.append(CpuSegment(cpu, pos, len(blob), pos, f"cpu{cpu}.raw"))
        pos += len(blob)
    buf = np.frombuffer(b"".join(blobs), np.uint8)
    return decode(buf, segments, _formats(), HEADER, path="synthetic", cmdlines=cmdlines)


def test_records_timestamps_and_fields():
    p = page(1_000, [data_record(5, sys_enter(42, 110, (1, 2, 3, 4, 5, 0xffffffffffffffff))),
                     data_record(7, sys_enter(43, 39))])
    d = run({0: [p]}, cmdlines={42: "kmlwork"})
    e = d.events
    assert e["ts_ns"].to_list() == [1_005, 1_012]
    assert e["event"].to_list() == ["sys_enter", "sys_enter"]
    assert e["system"].to_list() == ["raw_syscalls"] * 2
    assert e["pid"].to_list() == [42, 43]
    assert e["comm"].to_list() == ["kmlwork", None]
    assert e["id"].to_list() == [110, 39]
    assert e["args"][0].to_list() == [1, 2, 3, 4, 5, 0xffffffffffffffff]
    assert e["args"].dtype == pl.List(pl.UInt64)
    # the record's data starts after the 16-byte page header and its 4-byte record header
    assert e["offset"].to_list()[0] == 16 + 4
    # typed events carry no raw text by default; it is rendered on demand from the columns
    assert e["raw"].to_list() == [None, None]
    assert with_raw_text(e)["raw"][0] == "id=110 args=[1,2,3,4,5,18446744073709551615]"
    assert d.errors == [] and d.lost_events == 0


def test_time_extend_absolute_stamp_and_padding():
    big = (1 << 30) + 3
    p = page(10_000, [
        time_extend(big),
        data_record(2, sys_enter(1, 1)),                 # 10_000 + big + 2
        padding(9, 20),                                  # a discarded record: its delta counts
        data_record(1, sys_enter(1, 2)),                 # + 9 + 1
        abs_stamp(5_000_000_000),
        data_record(4, sys_enter(1, 3)),                 # 5_000_000_004
        long_record(6, sys_enter(1, 4) + b"x" * 100),    # type_len 0 record: + 6
    ])
    e = run({0: [p]}).events
    assert e["id"].to_list() == [1, 2, 3, 4]
    base = 10_000 + big + 2
    assert e["ts_ns"].to_list() == [base, base + 10, 5_000_000_004, 5_000_000_010]


def test_null_padding_ends_the_page():
    # padding with time_delta 0 means "nothing more on this page", even if commit says more
    p = page(100, [data_record(1, sys_enter(1, 1)), struct.pack("<I", 29) + b"\0" * 12,
                   data_record(1, sys_enter(1, 2))])
    e = run({0: [p]}).events
    assert e["id"].to_list() == [1]


def test_cpus_merge_by_time():
    a = page(100, [data_record(1, sys_enter(1, 1)), data_record(10, sys_enter(1, 3))])
    b = page(105, [data_record(0, sys_enter(2, 2)), data_record(100, sys_enter(2, 4))])
    e = run({0: [a], 1: [b]}).events
    assert e["id"].to_list() == [1, 2, 3, 4]
    assert e["cpu"].to_list() == [0, 1, 0, 1]
    assert e["seq"].to_list() == [0, 1, 2, 3]


def test_irq_flags_column():
    # irqs off (0x01), hardirq (0x08), need-resched (0x04): preempt count 1
    p = page(0, [data_record(1, sys_enter(1, 1, flags=0x0d, preempt=0x01)),
                 data_record(1, sys_enter(1, 1))])
    e = run({0: [p]}).events
    assert e["flags"].to_list() == ["dnh1.", "....."]


def test_strings_data_loc_rel_loc_and_flexible_array():
    name = b"eth0\0"
    rel = b"rel-text\0"
    body_len = 32 + 12                  # fixed part + flexible buf "hello world\n"
    name_at = body_len
    rel_at = name_at + len(name)
    payload = struct.pack("<HBBi", 900, 0, 0, 7)
    payload += struct.pack("<I", (len(name) << 16) | name_at)
    payload += struct.pack("<I", (len(rel) << 16) | (rel_at - 16))   # relative to field end
    payload += b"bash\0garbage!!!!"                                  # cut at the first NUL
    payload += b"hello world\n"
    payload += name + rel
    e = run({0: [page(0, [long_record(1, payload)])]}).events
    assert e["name"].to_list() == ["eth0"]
    assert e["rel"].to_list() == ["rel-text"]
    assert e["comm"].to_list() == [None] and e["target_comm"].to_list() == ["bash"]
    assert e["buf"][0].startswith("hello world\n")


def test_missed_events_become_lost_rows():
    p1 = page(500, [data_record(1, sys_enter(1, 1))], commit_flags=RB_MISSED_EVENTS |
              RB_MISSED_STORED, missed=1234)
    p2 = page(900, [data_record(1, sys_enter(1, 2))], commit_flags=RB_MISSED_EVENTS)
    d = run({3: [p1, p2]})
    e = d.events
    assert e["event"].to_list() == ["lost_events", "sys_enter", "lost_events", "sys_enter"]
    assert e["lost"].to_list() == [1234, None, None, None]
    assert e["ts_ns"].to_list()[:2] == [500, 501]
    assert e["cpu"].to_list() == [3, 3, 3, 3]
    assert d.lost_events == 1234


def test_corrupt_page_header_keeps_the_other_pages():
    good = page(100, [data_record(1, sys_enter(1, 1))])
    bad = page(200, [data_record(1, sys_enter(1, 2))], commit=PAGE * 3)
    good2 = page(300, [data_record(1, sys_enter(1, 3))])
    d = run({0: [good, bad, good2]})
    assert d.events["id"].to_list() == [1, 3]
    assert d.damaged_pages == 1
    assert len(d.errors) == 1
    err = d.errors[0]
    assert isinstance(err, KmltraceError) and err.offset == PAGE and "corrupt page header" in str(err)
    assert str(err).startswith("cpu0.raw@0x1000:")


def test_truncated_last_page_is_reported():
    good = page(100, [data_record(1, sys_enter(1, 1))])
    d = run({0: [good, good[:1000]]})
    assert d.events["id"].to_list() == [1]
    assert d.damaged_pages == 1
    assert d.errors[0].offset == PAGE and "truncated page" in d.errors[0].message


def test_record_running_past_commit_is_damage():
    rec = data_record(1, sys_enter(1, 1))
    p = page(0, [rec, long_record(1, sys_enter(1, 2) + b"y" * 200)], commit=len(rec) + 40)
    d = run({0: [p]})
    assert d.events["id"].to_list() == [1]
    assert d.damaged_pages == 1 and "corrupt record" in d.errors[0].message


def test_hex_strings():
    values = np.array([0, 1, 0xdeadbeef, 0xffffffffffffffff], np.uint64)
    assert hex_strings(values).to_list() == ["0x0", "0x1", "0xdeadbeef", "0xffffffffffffffff"]


def _valid_pages() -> bytes:
    return page(1, [data_record(3, sys_enter(1, 1)), time_extend(1 << 28),
                    long_record(2, sys_enter(2, 2) + b"z" * 90), padding(1, 8),
                    abs_stamp(1 << 29), data_record(1, sys_enter(3, 3))],
                commit_flags=RB_MISSED_EVENTS | RB_MISSED_STORED, missed=5)


def _check_decodes(blob: bytes) -> None:
    buf = np.frombuffer(blob, np.uint8)
    d = decode(buf, [CpuSegment(0, 0, len(blob), 0, "fuzz")], _formats(), HEADER, path="fuzz")
    assert all(isinstance(e, KmltraceError) for e in d.errors)
    assert d.events.height >= 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=0, max_size=3 * PAGE))
def test_fuzz_random_bytes(blob):
    _check_decodes(blob)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, PAGE - 1), st.integers(0, 255)), max_size=40))
def test_fuzz_mutated_valid_page(mutations):
    blob = bytearray(_valid_pages() * 2)
    for at, value in mutations:
        blob[at] = value
    _check_decodes(bytes(blob))


def test_valid_fuzz_seed_decodes_fully():
    # the seed of the mutation fuzzing is itself a correct page: all four records, one lost row
    d = run({0: [_valid_pages()]})
    assert d.events["event"].to_list() == ["lost_events"] + ["sys_enter"] * 3
    assert d.events["id"].drop_nulls().to_list() == [1, 2, 3]
    assert d.errors == []
    assert d.events["ts_ns"].to_list()[-1] == (1 << 29) + 1


@pytest.mark.parametrize("length", [0, 16, 17, 4095])
def test_short_inputs(length):
    _check_decodes(_valid_pages()[:length])


def test_raw_text_untyped_leaves_typed_events_without_raw():
    p = page(0, [data_record(1, sys_enter(1, 5)), long_record(1, struct.pack(
        "<HBBiII", 900, 0, 0, 7, (2 << 16) | 32, 0) + b"\0" * 16 + b"a\0")])
    buf = np.frombuffer(p, np.uint8)
    d = decode(buf, [CpuSegment(0, 0, len(p), 0, "x")], _formats(), HEADER, path="x",
               raw_text="untyped")
    # sys_enter's fields are all schema columns; strings_test's `rel`/`buf` are not
    assert d.events["raw"].to_list()[0] is None
    assert d.events["raw"].to_list()[1].startswith("name=a")
    assert d.events["id"].to_list()[0] == 5
