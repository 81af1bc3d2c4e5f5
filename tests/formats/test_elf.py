"""ELF TARGETs: detected from content (not cores), symbols only, damage in one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from kmltrace.errors import KmltraceError
from kmltrace.formats import elf
from kmltrace.formats.sniff import parse_file
from kmltrace.symbols.readers import read_elf
from tests.conftest import SAMPLES

LAB_ELF = SAMPLES / "lab-cpl3-tcg" / "kernel.elf"
VMCORE = SAMPLES / "lab-cpl3-tcg" / "vmcore.elf.zst"
TRUE = Path(shutil.which("true") or "/bin/true")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    # fuzzed copies keep /bin/true's build-id: never let them into the user's cache
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_elf_targets_are_detected_and_give_no_events():
    for path in (LAB_ELF, TRUE):
        parsed = parse_file(path)
        assert parsed.format == "elf" and parsed.errors == [] and parsed.events.height == 0
        assert parsed.meta["elf"] == str(path) and parsed.meta["elf_class"] == 64
    assert parse_file(LAB_ELF).meta["elf_type"] == "ET_EXEC"


def test_cores_are_left_to_the_vmcore_format():
    head = bytearray(LAB_ELF.read_bytes()[:64])
    head[16:18] = (4).to_bytes(2, "little")          # ET_CORE
    assert not elf.sniff(bytes(head))
    assert parse_file(VMCORE).format != "elf"


def test_truncated_elf_is_one_error_naming_the_file(tmp_path):
    cut = tmp_path / "cut"
    cut.write_bytes(TRUE.read_bytes()[:40])
    parsed = parse_file(cut)
    assert parsed.format == "elf" and len(parsed.errors) == 1
    assert str(parsed.errors[0]).startswith(f"{cut}@0x0: ") and "\n" not in str(parsed.errors[0])


def test_section_table_past_the_end_is_one_error(tmp_path):
    data = bytearray(TRUE.read_bytes())
    data[0x28:0x30] = (len(data) + 0x1000).to_bytes(8, "little")   # e_shoff beyond the file
    bad = tmp_path / "bad"
    bad.write_bytes(bytes(data))
    try:
        table = read_elf(bad)
    except KmltraceError as e:
        assert str(bad) in str(e) and "\n" not in str(e)
    else:                      # no sections readable: an empty table, not a crash
        assert len(table) == 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), min_size=1, max_size=12))
def test_fuzzed_elves_never_escape_as_tracebacks(tmp_path, edits):
    data = bytearray(TRUE.read_bytes())
    for pos, value in edits:
        data[pos % len(data)] = value
    path = tmp_path / "fuzzed"
    path.write_bytes(bytes(data))
    parsed = parse_file(path)
    assert all(isinstance(e, KmltraceError) and "internal error" not in str(e) for e in parsed.errors)
    try:
        read_elf(path)
    except KmltraceError as e:
        assert "\n" not in str(e)


def test_build_id_equals_readelf():
    import re
    import subprocess
    from kmltrace.symbols.readers import build_id, open_elf
    from tests.conftest import require_binary
    readelf = require_binary("readelf")
    out = subprocess.run([readelf, "-n", str(TRUE)], capture_output=True, text=True, check=True).stdout
    expected = re.search(r"Build ID: ([0-9a-f]+)", out).group(1)
    f, elf = open_elf(TRUE)
    with f:
        assert build_id(elf) == expected
