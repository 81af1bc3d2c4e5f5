"""Huge pages or not for the decoders' fresh memory (kmltrace.memory.fresh_pages): the
free-page-reporting test reads virtio-balloon's feature bits, the environment overrides it,
and both process-wide switches are put back after a decode."""

from __future__ import annotations

from pathlib import Path

import pytest

from kmltrace import memory
from kmltrace.formats import tracedat

from tests.conftest import SAMPLES, require_accelerator


def _balloon(tmp_path: Path, features: str | None) -> Path:
    """A virtio_balloon driver directory with one bound device of these feature bits."""
    driver = tmp_path / "virtio_balloon"
    driver.mkdir()
    (driver / "bind").write_text("")
    if features is not None:
        (driver / "virtio3").mkdir()
        (driver / "virtio3" / "features").write_text(features + "\n")
    return driver


# this project's VM's balloon (bit 5, free page reporting, set), and the same without it
REPORTING = "0110010100000000000000000000000010000000"
NO_REPORTING = "0110000100000000000000000000000010000000"


@pytest.mark.parametrize("features, reports", [
    (REPORTING, True), (NO_REPORTING, False), (None, False), ("0110", False)])
def test_free_page_reporting_from_feature_bits(tmp_path, features, reports):
    assert memory.reports_free_memory(_balloon(tmp_path, features)) is reports


def test_no_balloon_driver(tmp_path):
    assert memory.reports_free_memory(tmp_path / "absent") is False


@pytest.mark.parametrize("setting, reporting, expected", [
    ("1", True, True), ("0", False, False), (None, True, False), (None, False, True),
    ("yes", False, True)])
def test_environment_decides_first(monkeypatch, setting, reporting, expected):
    if setting is None:
        monkeypatch.delenv("KMLTRACE_HUGE_PAGES", raising=False)
    else:
        monkeypatch.setenv("KMLTRACE_HUGE_PAGES", setting)
    monkeypatch.setattr(memory, "reports_free_memory", lambda: reporting)
    assert memory.huge_pages_pay() is expected


@pytest.mark.parametrize("setting", ["0", "1"])
def test_switches_set_for_a_decode_and_restored(monkeypatch, setting):
    """A real trace.dat decoded with each setting: numpy's and the C accelerator's switches
    set to it during the decode, and put back to what they were after."""
    require_accelerator("_ringscan")
    from kmltrace.formats import _ringscan

    real_numpy, real_c = memory._numpy_hugepage_switch(), _ringscan.set_huge_pages
    assert real_numpy is not None
    calls = []
    monkeypatch.setattr(memory, "_numpy_hugepage_switch",
                        lambda: lambda on: calls.append(("numpy", on)) or real_numpy(on))
    monkeypatch.setattr(_ringscan, "set_huge_pages",
                        lambda on: calls.append(("c", on)) or real_c(on))
    monkeypatch.setenv("KMLTRACE_HUGE_PAGES", setting)
    numpy_before, c_before = real_numpy(True), real_c(True)
    try:
        events = tracedat.parse(SAMPLES / "host-6.18-workload" / "trace.dat").events
        huge = setting == "1"
        assert calls == [("numpy", huge), ("c", huge), ("numpy", True), ("c", True)]
        assert events.height == 2748
        assert real_numpy(True) is True and real_c(True) is True
    finally:
        real_numpy(numpy_before)
        real_c(c_before)
