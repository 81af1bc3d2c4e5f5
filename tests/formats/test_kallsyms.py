"""kallsyms snapshots and System.map files as TARGETs."""

from __future__ import annotations

import re
from collections import Counter

import polars as pl
import pytest

from kmltrace.capture import load
from kmltrace.formats import kallsyms
from kmltrace.formats.sniff import HEAD_BYTES, parse_file, read_head
from kmltrace.symbols import Symbolizer
from tests.conftest import SAMPLES

WORKLOAD = SAMPLES / "host-6.18-workload"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture
def snapshot(tmp_path):
    """The real kallsyms that trace-cmd stored in the workload's trace.dat, as a file."""
    text = load([WORKLOAD / "trace.dat"]).metas("kallsyms_text")[0]
    path = tmp_path / "kallsyms"
    path.write_text(text)
    return path


def test_kallsyms_target_names_the_bundle_kernel_addresses(snapshot):
    parsed = parse_file(snapshot)
    assert parsed.format == "kallsyms" and parsed.errors == [] and parsed.events.height == 0
    capture = load([WORKLOAD / "bundle", snapshot])
    sym = Symbolizer.for_capture(capture)
    assert sym.kernel is not None and sym.kernel.source == str(snapshot)
    faults = capture.events().filter(pl.col("event") == "page_fault_kernel").collect()
    names = [t.split("+")[0] for t in sym.kernel_lookup(faults["ip"])["sym_text"].to_list()]
    printed = re.findall(r"page_fault_kernel: .* ip=(\S+)", (WORKLOAD / "trace.txt").read_text())
    assert faults.height == len(printed) > 0 and Counter(names) == Counter(printed)


def test_hidden_kallsyms_is_one_error_line(tmp_path):
    hidden = tmp_path / "kallsyms"
    hidden.write_text("".join(f"0000000000000000 T f{i}\n" for i in range(10)))
    parsed = parse_file(hidden)
    assert parsed.format == "kallsyms" and len(parsed.errors) == 1
    assert "hidden" in str(parsed.errors[0]) and str(hidden) in str(parsed.errors[0])


def test_no_other_sample_is_taken_for_kallsyms():
    files = [p for p in SAMPLES.rglob("*") if p.is_file() and p.stat().st_size]
    assert len(files) > 50
    for path in files:
        assert not kallsyms.sniff(read_head(path, HEAD_BYTES)), path
