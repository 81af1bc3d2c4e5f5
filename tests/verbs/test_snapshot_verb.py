"""``kmltrace snapshot`` refusals and bad inputs: one line on stderr each, exit 1 (2 for usage).

The damaged files here are SYNTHETIC (a text file, garbage zstd, an ELF core header whose
segment runs past the end of the file); the same cases on a real QEMU dump are in
tests/system/test_snapshot.py.
"""

from __future__ import annotations

import struct

import pytest
from click.testing import CliRunner

from kmltrace.cli import main
from kmltrace.collectors import snapshot as collector


def run(*args):
    result = CliRunner().invoke(main, ["snapshot", *map(str, args)])
    lines = result.stderr.strip().splitlines()
    return result.exit_code, lines, result.stdout


def one_error(*args) -> str:
    code, lines, stdout = run(*args)
    assert code == 1, (code, lines)
    assert len(lines) == 1 and lines[0].startswith("kmltrace: "), lines
    assert stdout == ""
    return lines[0]


def test_missing_proc_kcore(monkeypatch, tmp_path):
    monkeypatch.setattr(collector, "KCORE", tmp_path / "kcore")
    line = one_error()
    assert line == (f"kmltrace: {tmp_path / 'kcore'}: does not exist (kernel built without "
                    "CONFIG_PROC_KCORE?): use --vmcore FILE or --qemu SOCKET")


def test_not_root(monkeypatch, tmp_path):
    kcore = tmp_path / "kcore"
    kcore.write_bytes(b"")
    monkeypatch.setattr(collector, "KCORE", kcore)
    monkeypatch.setattr(collector.os, "geteuid", lambda: 1000)
    assert one_error().endswith("reading the running kernel needs root")


def test_vmcore_missing(tmp_path):
    assert one_error("--vmcore", tmp_path / "nope.elf").endswith("nope.elf: no such file")


def test_vmcore_not_a_core(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    assert "not a usable vmcore" in one_error("--vmcore", text)


def test_vmcore_corrupt_zstd(tmp_path):
    bad = tmp_path / "vmcore.elf.zst"
    bad.write_bytes(b"\x28\xb5\x2f\xfd" + b"\xff" * 64)
    assert "corrupt zstd vmcore" in one_error("--vmcore", bad)


def test_vmcore_truncated_elf(tmp_path):
    # an ELF64 core with one PT_LOAD of 1 MiB at offset 0x1000, cut at 0x1800 bytes
    header = bytearray(64)
    header[:7] = b"\x7fELF\x02\x01\x01"
    struct.pack_into("<HHIQQQIHHHHHH", header, 16, 4, 62, 1, 0, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 4, 0x1000, 0, 0, 1 << 20, 1 << 20, 0x1000)
    dump = tmp_path / "cut.elf"
    dump.write_bytes(bytes(header) + phdr + b"\0" * (0x1800 - 64 - len(phdr)))
    line = one_error("--vmcore", dump)
    assert line == (f"kmltrace: {dump}@0x1800: truncated dump: its ELF headers describe "
                    f"{0x1000 + (1 << 20)} bytes, the file has {0x1800}")


def test_qemu_socket_missing(tmp_path):
    assert "cannot attach to the QEMU guest over QMP" in one_error("--qemu", tmp_path / "qmp")


def test_two_sources_is_a_usage_error(tmp_path):
    code, lines, _ = run("--vmcore", tmp_path / "a", "--qemu", tmp_path / "b")
    assert code == 2


@pytest.mark.parametrize("option", ["--vmcore", "--vmlinux", "-o", "--qemu", "--json"])
def test_help_names_every_option(option):
    result = CliRunner().invoke(main, ["snapshot", "--help"])
    assert result.exit_code == 0 and option in result.stdout


def test_vmlinux_missing(tmp_path):
    line = one_error("--vmcore", tmp_path / "vmcore", "--vmlinux", tmp_path / "vmlinux")
    assert line == f"kmltrace: {tmp_path / 'vmlinux'}: no such file"
