"""trace.dat v7 with zlib compression (sample_traces/host-6.18-zlib: the real workload capture
copied by libtracecmd with zlib): the same events as the zstd file it was copied from, as many
as libtracecmd reads back; a damaged zlib chunk ends its CPU's data there; no block inflates
past the size its header gives."""

from __future__ import annotations

import struct
import zlib

import polars as pl
import pytest
import zstandard

from kmltrace.errors import InputError
from kmltrace.formats import tracedat
from kmltrace.formats.sniff import parse_file

from tests.conftest import REPO, SAMPLES, require_binary

ZLIB = SAMPLES / "host-6.18-zlib" / "trace.dat"
ZSTD = SAMPLES / "host-6.18-workload" / "trace.dat"


@pytest.fixture(scope="module")
def zlib_file():
    return tracedat.parse(ZLIB)


def test_same_events_as_the_zstd_original(zlib_file):
    assert parse_file(ZLIB).format == "tracedat"
    assert zlib_file.errors == []
    assert zlib_file.meta["version"] == 7 and zlib_file.meta["compression"] == "zlib"
    # libtracecmd's own count of the copy, written when the sample was made
    counted = (ZLIB.parent / "libtracecmd.txt").read_text()
    assert counted == f"events={zlib_file.events.height}\n"
    original = tracedat.parse(ZSTD).events
    # the compressed layout differs, so do the records' file offsets; nothing else
    assert zlib_file.events.drop("file", "offset").equals(original.drop("file", "offset"))
    assert zlib_file.meta["kallsyms_bytes"] > 100_000


def _chunks(path):
    """(cpu, file offset of its compressed data) of the one CPU that holds data."""
    info, _, _, _ = tracedat.read(path)
    (cpu, offset, _), = [c for b in info.buffers for c in b.cpus if c[2]]
    return cpu, offset


def test_corrupt_zlib_chunk_keeps_the_chunks_before(tmp_path, zlib_file):
    cpu, offset = _chunks(ZLIB)
    data = bytearray(ZLIB.read_bytes())
    count, = struct.unpack_from("<I", data, offset)
    csize0, usize0 = struct.unpack_from("<II", data, offset + 4)
    second = offset + 4 + 8 + csize0
    assert count >= 2 and data[second + 8] == 0x78      # a zlib stream's first byte
    data[second + 8:second + 16] = b"\xff" * 8
    damaged = tmp_path / "trace.dat"
    damaged.write_bytes(bytes(data))
    parsed = tracedat.parse(damaged)
    (err,) = parsed.errors
    assert err.offset == second and f"cannot decompress cpu{cpu} chunk" in err.message
    assert str(err).startswith(f"{damaged}@{second:#x}: ") and "\n" not in str(err)
    kept = zlib_file.events.filter(pl.col("offset") < offset + usize0)
    assert 0 < kept.height == parsed.events.height < zlib_file.events.height
    assert parsed.events["ts_ns"].to_list() == kept["ts_ns"].to_list()


def test_chunk_that_inflates_past_its_size_is_damage(tmp_path, zlib_file):
    """A chunk header that gives fewer bytes than its stream holds: an error, and no more than
    the header's size is ever inflated."""
    cpu, offset = _chunks(ZLIB)
    data = bytearray(ZLIB.read_bytes())
    csize0, usize0 = struct.unpack_from("<II", data, offset + 4)
    struct.pack_into("<I", data, offset + 8, usize0 - 1)
    damaged = tmp_path / "trace.dat"
    damaged.write_bytes(bytes(data))
    parsed = tracedat.parse(damaged)
    assert any(f"cpu{cpu} chunk" in e.message and "more than" in e.message
               for e in parsed.errors), [e.message for e in parsed.errors]
    assert parsed.events.height < zlib_file.events.height


@pytest.mark.parametrize("name", ["zlib", "zstd"])
def test_hostile_block_is_not_inflated(name):
    """A 64 MiB block of zeros behind a header that says 4096 bytes (a decompression bomb):
    refused without inflating it, for both of trace-cmd's compressions."""
    bomb = bytes(64 << 20)
    blob = zlib.compress(bomb, 9) if name == "zlib" else \
        zstandard.ZstdCompressor(write_content_size=True).compress(bomb)
    block = tracedat._decompressor(name, "x.dat")
    with pytest.raises(ValueError, match="more than the 4096 bytes"):
        block(blob, 4096)
    # a header that says 0 bytes is no licence to inflate without limit
    with pytest.raises(Exception, match="more than the 0 bytes|content size"):
        block(blob if name == "zlib" else
              zstandard.ZstdCompressor(write_content_size=False).compress(bomb), 0)
    small = zlib.compress(b"abc") if name == "zlib" else \
        zstandard.ZstdCompressor().compress(b"abc")
    assert block(small, 3) == b"abc"


def test_unknown_compression_names_the_file():
    with pytest.raises(InputError, match="unknown trace.dat compression 'lz4'"):
        tracedat._decompressor("lz4", "x.dat")


@pytest.mark.system
def test_sample_is_what_the_script_writes(tmp_path):
    """make_zlib_sample.py (gcc, libtracecmd-dev, zlib1g-dev) writes the committed file again,
    byte for byte, and libtracecmd reads back as many events."""
    import subprocess
    import sys

    require_binary("gcc")
    require_binary("trace-cmd")
    out = tmp_path / "zlib"
    subprocess.run([sys.executable, str(REPO / "sample_traces" / "make_zlib_sample.py"),
                    str(out)], check=True, capture_output=True)
    assert (out / "trace.dat").read_bytes() == ZLIB.read_bytes()
    assert (out / "libtracecmd.txt").read_text() == (ZLIB.parent / "libtracecmd.txt").read_text()


@pytest.mark.parametrize("path", [ZLIB, ZSTD], ids=["zlib", "zstd"])
def test_two_threads_decompress_the_same_table(monkeypatch, tmp_path, path):
    """Big files are decompressed by two threads, each its half of the chunks: forced on
    these small ones, the same table; the last chunk (second half) made unreadable still
    cuts its CPU there, and the pages of the chunks before it are kept."""
    one = tracedat.parse(path)
    monkeypatch.setattr(tracedat, "_THREADED_DECOMPRESS", 0)
    assert tracedat.parse(path).events.equals(one.events)
    cpu, offset = _chunks(path)
    data = bytearray(path.read_bytes())
    count, = struct.unpack_from("<I", data, offset)
    at, chunks = offset + 4, []
    for _ in range(count):
        csize, usize = struct.unpack_from("<II", data, at)
        chunks.append((at, csize, usize))
        at += 8 + csize
    assert count >= 2
    last, csize, _ = chunks[-1]
    data[last + 8:last + 8 + min(8, csize)] = b"\xff" * min(8, csize)
    damaged = tmp_path / "trace.dat"
    damaged.write_bytes(bytes(data))
    parsed = tracedat.parse(damaged)
    (err,) = parsed.errors
    assert err.offset == last and f"cpu{cpu} chunk" in err.message
    kept = one.events.filter(pl.col("offset") < offset + sum(u for _, _, u in chunks[:-1]))
    assert 0 < parsed.events.height == kept.height < one.events.height
