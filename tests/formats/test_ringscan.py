"""The C accelerator of the ring-buffer decoder (formats/_ringscan.c) against the pure numpy
path, which is its reference: every real capture under sample_traces/ with trace.dat files or
raw pages decodes to the same frame (every column, raw text included), the same errors and
the same meta either way; so do real pages damaged by hypothesis. The C functions are also
fed hostile arguments directly: they may refuse (ValueError), never crash or read outside
their buffers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kmltrace.accel import use_accelerator
from kmltrace.formats import ftrace_raw, ringbuffer, tracedat
from kmltrace.formats.event_format import FormatTable, parse_header_page
from tests import conftest
from tests.conftest import SAMPLES

TRACE_DATS = sorted(SAMPLES.glob("*/*.dat"))
BUNDLES = sorted({p.parent for p in SAMPLES.glob("**/ftrace/cpu*.raw")})


def require_accelerator():
    conftest.require_accelerator("_ringscan")


def test_accelerator_is_built():
    # CI installs with gcc and the headers: there the extension must exist and be used
    require_accelerator()
    assert use_accelerator("_ringscan") is not None


def test_pure_switch(monkeypatch):
    monkeypatch.setenv("KMLTRACE_PURE", "1")
    assert use_accelerator("_ringscan") is None


def _both(monkeypatch, fn):
    """fn() on the pure path and on the accelerated one."""
    monkeypatch.setenv("KMLTRACE_PURE", "1")
    pure = fn()
    monkeypatch.setenv("KMLTRACE_PURE", "0")
    fast = fn()
    return pure, fast


def _assert_same(pure, fast):
    assert pure.events.columns == fast.events.columns
    assert pure.events.schema == fast.events.schema
    for name in pure.events.columns:
        assert pure.events[name].equals(fast.events[name]), name
    assert pure.events.equals(fast.events)
    assert [str(e) for e in pure.errors] == [str(e) for e in fast.errors]
    assert getattr(pure, "meta", None) == getattr(fast, "meta", None)


def test_samples_are_found():
    # the lists below are not silently empty (the samples this test was written against)
    assert len(TRACE_DATS) >= 3
    assert len(BUNDLES) >= 4


@pytest.mark.parametrize("raw_text", ["untyped", "all"])
@pytest.mark.parametrize("read, path", [(tracedat.parse, p) for p in TRACE_DATS]
                         + [(ftrace_raw.parse_dir, p) for p in BUNDLES],
                         ids=lambda x: (str(x.relative_to(SAMPLES)) if isinstance(x, Path)
                                        else x.__module__.rsplit(".", 1)[-1]))
def test_every_sample_same_on_both_paths(monkeypatch, read, path, raw_text):
    """Every real trace.dat and raw-page bundle: the same table on both paths."""
    require_accelerator()
    pure, fast = _both(monkeypatch, lambda: read(path, raw_text=raw_text))
    assert pure.events.height > 0
    _assert_same(pure, fast)


def test_lossy_capture_exercises_lost_markers(monkeypatch):
    # the lossy sample's pages carry missed-events counts: both paths make the same rows
    require_accelerator()
    path = SAMPLES / "host-6.18-lossy" / "trace.dat"
    pure, fast = _both(monkeypatch, lambda: tracedat.parse(path))
    assert (pure.events["event"] == "lost_events").sum() > 0
    _assert_same(pure, fast)


# -- damaged real pages through both paths --------------------------------------------------------

REAL = SAMPLES / "host-6.18-system" / "bundle" / "ftrace"


def _real_pages():
    header = parse_header_page((REAL / "header_page").read_text(), path="header_page")
    formats = FormatTable(header.commit_size)
    for f in sorted((REAL / "events").glob("*/*/format")):
        formats.add(f.read_text(), f.parent.parent.name, path=str(f))
    blobs = [(int(f.stem[3:]), f.read_bytes()) for f in sorted(REAL.glob("cpu*.raw"))]
    return header, formats, blobs


HEADER, FORMATS, BLOBS = _real_pages()


def _decode_both(blobs, monkeypatch, raw_text="all"):
    out = []
    for pure in ("1", "0"):
        monkeypatch.setenv("KMLTRACE_PURE", pure)
        segments, pos = [], 0
        for cpu, blob in blobs:
            segments.append(ringbuffer.CpuSegment(cpu, pos, len(blob), 0, f"cpu{cpu}.raw"))
            pos += len(blob)
        buf = np.frombuffer(b"".join(b for _, b in blobs), np.uint8).copy()
        out.append(ringbuffer.decode(buf, segments, FORMATS, HEADER, path="fuzz",
                                     long_size=HEADER.commit_size, raw_text=raw_text))
    return out


def _assert_same_decoded(pure, fast):
    _assert_same(pure, fast)
    for counter in ("lost_events", "lost_unknown", "pages", "damaged_pages", "damaged_records"):
        assert getattr(pure, counter) == getattr(fast, counter), counter


def test_real_pages_decode_the_same(monkeypatch):
    require_accelerator()
    pure, fast = _decode_both(BLOBS, monkeypatch)
    assert pure.events.height > 4000 and not pure.errors
    _assert_same_decoded(pure, fast)


_page = HEADER.page_size


def test_every_kind_of_damage_same_on_both_paths(monkeypatch):
    require_accelerator()
    blobs = [(cpu, bytearray(b)) for cpu, b in BLOBS]
    blob = blobs[0][1]
    c = HEADER.commit_offset
    blob[c:c + 4] = (_page * 2).to_bytes(4, "little")                  # page 0: corrupt header
    at = _page + c                                                      # page 1: missed events
    used = int.from_bytes(blob[at:at + 4], "little") & ((1 << 30) - 1)
    blob[at:at + 4] = (used | 3 << 30).to_bytes(4, "little")
    head = 2 * _page + HEADER.data_offset                               # page 2: a record
    blob[head:head + 8] = (0).to_bytes(4, "little") + (5).to_bytes(4, "little")  # too short
    cpu, last = blobs[-1]
    blobs[-1] = (cpu, last[:-100])                                     # a truncated page
    pure, fast = _decode_both([(c_, bytes(b)) for c_, b in blobs], monkeypatch)
    text = " | ".join(str(e) for e in pure.errors)
    assert "corrupt page header" in text and "corrupt record" in text and "truncated" in text
    assert pure.damaged_pages == 3 and (pure.events["event"] == "lost_events").sum() == 1
    _assert_same_decoded(pure, fast)
_damage = st.lists(st.tuples(st.integers(0, 1), st.integers(0, 1 << 20), st.integers(0, 255)),
                   max_size=30)
# commit words: in range, over the page, with the missed-events bits
_commits = st.lists(st.tuples(st.integers(0, 1), st.integers(0, 40),
                              st.sampled_from([0, 1 << 30, 1 << 31, 3 << 30]),
                              st.integers(0, 5000)), max_size=6)


@settings(max_examples=60, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(damage=_damage, commits=_commits, cut=st.integers(0, 3 * _page),
       order=st.booleans())
def test_fuzz_damaged_real_pages_same_on_both_paths(monkeypatch, damage, commits, cut, order):
    require_accelerator()
    blobs = [(cpu, bytearray(b)) for cpu, b in BLOBS]
    for which, at, value in damage:
        blob = blobs[which % len(blobs)][1]
        blob[at % len(blob)] = value
    for which, p, flags, length in commits:
        blob = blobs[which % len(blobs)][1]
        at = (p % (len(blob) // _page)) * _page + HEADER.commit_offset
        blob[at:at + 4] = (length | flags).to_bytes(4, "little")
    cpu, last = blobs[-1]
    blobs[-1] = (cpu, last[:max(0, len(last) - cut)])      # a truncated last page
    if order:
        blobs.reverse()     # CPUs in another order: ties of the merge broken by it
    pure, fast = _decode_both([(c, bytes(b)) for c, b in blobs], monkeypatch)
    _assert_same_decoded(pure, fast)


def test_out_of_order_times_fall_back_to_the_stable_sort(monkeypatch):
    # a page whose time goes backwards: the k-way merge cannot be used, the result is the same
    require_accelerator()
    blobs = [(cpu, bytearray(b)) for cpu, b in BLOBS]
    blob = blobs[0][1]
    second = _page + HEADER.timestamp_offset
    blob[second:second + 8] = (1).to_bytes(8, "little")
    pure, fast = _decode_both([(c, bytes(b)) for c, b in blobs], monkeypatch)
    cpu0 = pure.events.filter(pl.col("cpu") == blobs[0][0]).sort("offset")
    assert not cpu0["ts_ns"].is_sorted()     # in page order, the time goes back
    _assert_same_decoded(pure, fast)


# -- the C functions fed hostile arguments ---------------------------------------------------------

def _rs():
    require_accelerator()
    return use_accelerator("_ringscan")


_ints = st.integers(-(1 << 40), 1 << 40) | st.integers(-8, 8200)


@settings(max_examples=300, deadline=None)
@given(blob=st.binary(max_size=3 * 4096), start=_ints, n_pages=_ints, page_size=_ints,
       ts_off=_ints, commit_off=_ints, commit_size=st.sampled_from([0, 4, 8, 16, -8]),
       data_off=_ints, data_size=_ints)
def test_fuzz_walk_arguments(blob, start, n_pages, page_size, ts_off, commit_off, commit_size,
                             data_off, data_size):
    rs = _rs()
    try:
        got = rs.walk(blob, start, n_pages, page_size, ts_off, commit_off, commit_size,
                      data_off, data_size)
    except (ValueError, OverflowError):
        return
    n = len(got["ts"]) // 8
    assert len(got["kind"]) == 4 * n and len(got["length"]) == 4 * n
    starts = np.frombuffer(got["start"], np.int64)
    lengths = np.frombuffer(got["length"], np.int32)
    kinds = np.frombuffer(got["kind"], np.int32)
    # every record's payload lies inside the pages it was walked from
    events = kinds >= 0
    assert (starts[events] >= start).all()
    assert (starts[events] + lengths[events] <= start + n_pages * page_size).all()


@settings(max_examples=300, deadline=None)
@given(blob=st.binary(max_size=3 * 4096))
def test_fuzz_walk_pages(blob):
    # real layout, random pages
    rs = _rs()
    h = HEADER
    got = rs.walk(blob, 0, len(blob) // h.page_size, h.page_size, h.timestamp_offset,
                  h.commit_offset, h.commit_size, h.data_offset, h.data_size)
    assert got["short_records"] >= 0


_arrays = st.lists(st.integers(-(1 << 62), 1 << 62), max_size=20)


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(st.tuples(_arrays, st.integers(-5, 5)), max_size=4),
       buf=st.binary(max_size=64), use_order=st.booleans(), junk=st.integers(-3, 30))
def test_fuzz_merge(parts, buf, use_order, junk):
    rs = _rs()
    items, all_ts = [], []
    for ts, cpu in parts:
        ts = np.array(sorted(ts) if cpu % 2 else ts, np.int64)
        n = ts.size
        starts = np.resize(np.array([junk, -junk, 1 << 40], np.int64), n)
        items.append((ts, np.resize(np.array([0, -1, 5], np.int32), n), starts,
                      np.zeros(n, np.int32), np.zeros(n, np.int64), cpu, junk))
        all_ts.append(ts)
    order = None
    if use_order:
        order = np.argsort(np.concatenate(all_ts) if all_ts else np.zeros(0, np.int64),
                           kind="stable").astype(np.int64)
        if junk > 20 and order.size:
            order[0] = junk * 1000      # out of range: refused
    try:
        got = rs.merge(items, buf, order)
    except ValueError:
        return
    if got is None:
        assert order is None
        return
    ts = np.frombuffer(got["ts"], np.int64)
    expected = np.concatenate(all_ts) if all_ts else np.zeros(0, np.int64)
    assert np.array_equal(ts, np.sort(expected, kind="stable"))


def test_merge_refuses_mismatched_parts():
    rs = _rs()
    with pytest.raises(ValueError):
        rs.merge([(np.zeros(2, np.int64), np.zeros(1, np.int32), np.zeros(2, np.int64),
                   np.zeros(2, np.int32), np.zeros(2, np.int64), 0, 0)], b"", None)


@settings(max_examples=200, deadline=None)
@given(index=st.lists(st.integers(-2, 10), max_size=50), n_types=st.integers(-1, 12))
def test_fuzz_type_order(index, n_types):
    rs = _rs()
    idx = np.array(index, np.int32)
    try:
        order, counts = rs.type_order(idx, n_types)
    except ValueError:
        assert n_types < 1 or (idx.size and (idx.min() < 0 or idx.max() >= n_types))
        return
    assert np.array_equal(np.frombuffer(order, np.int64), np.argsort(idx, kind="stable"))
    assert np.array_equal(np.frombuffer(counts, np.int64), np.bincount(idx, minlength=n_types))


@settings(max_examples=200, deadline=None)
@given(buf=st.binary(max_size=64), at=st.lists(st.integers(-(1 << 62), 1 << 62), max_size=20),
       width=st.integers(-2, 70))
def test_fuzz_gather_blocks(buf, at, width):
    rs = _rs()
    positions = np.array(at, np.int64)
    try:
        out = rs.gather_blocks(buf, positions, width)
    except ValueError:
        assert width <= 0 or width > len(buf)
        return
    data = np.frombuffer(buf, np.uint8)
    clipped = np.clip(positions, 0, len(buf) - width)
    expected = data[clipped[:, None] + np.arange(width)] if positions.size else np.zeros(0)
    assert np.frombuffer(out, np.uint8).tobytes() == expected.astype(np.uint8).tobytes()


@settings(max_examples=200, deadline=None)
@given(src=st.binary(max_size=64), width=st.integers(-1, 20),
       idx=st.lists(st.integers(-3, 10), max_size=20), idx_size=st.sampled_from([1, 2, 4, 8]),
       extra=st.integers(-2, 2))
def test_fuzz_take_rows(src, width, idx, idx_size, extra):
    rs = _rs()
    dtype = {1: np.int8, 2: np.uint16, 4: np.int32, 8: np.int64}[idx_size]
    index = np.array([i % 65536 if idx_size == 2 else i for i in idx]).astype(dtype)
    dst = bytearray(max(0, len(index) * max(width, 0) + extra))
    try:
        rs.take_rows(src, width, index, idx_size, dst)
    except ValueError:
        return
    rows = np.frombuffer(src, np.uint8).reshape(-1, width)
    assert bytes(dst) == rows[index.astype(np.int64)].tobytes()


@pytest.mark.parametrize("spec", [
    ("vu", "x", -1, 0, [], []),
    ("L", "x", 5, 9, [None], []),
    ("L", "x", 1, 0, [b"not a block"], []),
    ("+L", "x", 1, 0, [None, None], [("L", "item", 0, 0, [None, 3], [])]),
    ("+L", "x", 1, 0, [None], [("+L", "c", 0, 0, [], [("+L", "c", 0, 0, [], [
        ("+L", "c", 0, 0, [], [("+L", "c", 0, 0, [], [("+L", "c", 0, 0, [], [])])])])])]),
])
def test_export_refuses_bad_specs(spec):
    rs = _rs()
    with pytest.raises((ValueError, TypeError)):
        rs.export_array(spec)


def test_exported_columns_outlive_their_blocks(tmp_path):
    # the memory belongs to polars once imported: dropping every Python reference to the
    # blocks, collecting garbage and writing parquet leave the values intact
    import gc

    from kmltrace.formats import arrow_columns
    rs = _rs()
    strings = ["sys_enter", None, "a name longer than twelve", "ünïcødé-comm-name", ""]
    index = np.array([0, 1, 2, 3, 4, 2, 0] * 1000, np.int32)
    valid = np.ones(index.size, bool)
    valid[5::7] = False
    col = arrow_columns.string_column(rs, "s", arrow_columns.view_table(strings), index, valid)
    rows = np.array([1, 4, 6999], np.int64)
    lists = arrow_columns.list_column(rs, "l", rows, np.arange(9, dtype=np.uint64).reshape(3, 3),
                                      7000)
    gc.collect()
    expected = [None if not valid[i] else strings[k] for i, k in enumerate(index)]
    assert col.to_list() == expected
    assert col.dtype == pl.String and col.null_count() == sum(e is None for e in expected)
    assert lists.dtype == pl.List(pl.UInt64)
    assert lists[1].to_list() == [0, 1, 2] and lists[6999].to_list() == [6, 7, 8]
    assert lists.null_count() == 7000 - 3
    frame = pl.DataFrame([col, lists])
    frame.write_parquet(tmp_path / "x.parquet")
    del col, lists
    gc.collect()
    back = pl.read_parquet(tmp_path / "x.parquet")
    assert back["s"].to_list() == expected
    assert back.equals(frame)


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(-(1 << 63), (1 << 63) - 1), st.integers(0, (1 << 64) - 1),
                               st.integers(-128, 127)), max_size=30),
       literals=st.lists(st.text(max_size=8), min_size=4, max_size=4))
def test_render_text_matches_python_formatting(rows, literals):
    from kmltrace.formats import arrow_columns
    rs = _rs()
    signed = np.array([r[0] for r in rows], np.int64)
    unsigned = np.array([r[1] for r in rows], np.uint64)
    small = np.array([r[2] for r in rows], np.int8)
    text = arrow_columns.rendered_text(rs, len(rows), literals, [signed, unsigned, small],
                                       [False, True, False])
    expected = [f"{literals[0]}{a}{literals[1]}{b:#x}{literals[2]}{c}{literals[3]}"
                for a, b, c in rows]
    assert text.series().to_list() == expected


@pytest.mark.parametrize("args", [
    (-1, [b""], [], 0),
    (2, [b"a"], [(np.zeros(2, np.int64), 8, 0)], 0),           # literals != columns + 1
    (2, [b"a", b"b"], [(np.zeros(3, np.int64), 8, 0)], 0),     # wrong length
    (2, [b"a", b"b"], [(np.zeros(2, np.int64), 3, 0)], 0),     # odd item size
    (2, [b"a", b"b"], [(np.zeros(2, np.int64), 8, 7)], 0),     # unknown kind
    (2, ["a", b"b"], [(np.zeros(2, np.int64), 8, 0)], 0),      # not bytes
    (2, [b"a", b"b"], [(np.zeros(2, np.int64), 8, 0)], -1),    # buffer index
])
def test_render_text_refuses_bad_arguments(args):
    rs = _rs()
    with pytest.raises((ValueError, TypeError)):
        rs.render_text(*args)


@settings(max_examples=150, deadline=None)
@given(parts=st.lists(st.lists(st.one_of(st.none(), st.text(max_size=20)), max_size=8),
                      max_size=4),
       n_extra=st.integers(0, 5), seed=st.integers(0, 1000))
def test_assemble_text_equals_a_python_scatter(parts, n_extra, seed):
    # parts of strings (None: null) put at disjoint random rows; the rest of the rows null
    from kmltrace.formats import arrow_columns
    rs = _rs()
    n = sum(len(p) for p in parts) + n_extra
    rows = np.random.default_rng(seed).permutation(n)
    pieces, expected, at = [], [None] * n, 0
    for k, strings in enumerate(parts):
        where = np.sort(rows[at:at + len(strings)])
        at += len(strings)
        for r, text in zip(where, strings):
            expected[r] = text
        series = pl.Series(strings, dtype=pl.String)
        pieces.append((where, series if k % 2 else arrow_columns.text_of(rs, series)))
    column = arrow_columns.assemble_text(rs, "raw", pieces, n)
    assert column.to_list() == expected
    assert column.null_count() == sum(e is None for e in expected)


@pytest.mark.parametrize("rows", [[-1], [3], [1 << 40]])
def test_scatter_views_refuses_rows_outside(rows):
    rs = _rs()
    with pytest.raises(ValueError):
        rs.scatter_views(bytearray(48), np.array(rows, np.int64), bytes(16), 0)
