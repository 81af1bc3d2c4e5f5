"""The accelerator switch (accel.py): a machine without a C compiler installs kmltrace without
the C modules, and every parser must then take its pure path on its own."""

from __future__ import annotations

import sys
from pathlib import Path

from kmltrace import accel
from kmltrace.formats import ftrace_text, text_scan, tracedat
from tests.formats.workload_counts import WORKLOAD, assert_workload_counts


def _not_built(monkeypatch, *names: str) -> None:
    # a None entry in sys.modules makes `import` raise ImportError, as a missing .so does
    for name in names:
        monkeypatch.setitem(sys.modules, f"kmltrace.formats.{name}", None)


def test_pure_switch_turns_the_accelerators_off(monkeypatch):
    monkeypatch.setenv("KMLTRACE_PURE", "1")
    assert accel.use_accelerator("_textscan") is None
    assert accel.use_accelerator("_ringscan") is None


def test_a_module_that_is_not_built_is_none(monkeypatch):
    monkeypatch.delenv("KMLTRACE_PURE", raising=False)
    _not_built(monkeypatch, "_textscan")
    assert accel.use_accelerator("_textscan") is None
    assert not accel.built("_textscan")
    assert text_scan.scanner() is None


def test_without_the_c_modules_the_parsers_give_the_workload_counts(monkeypatch):
    monkeypatch.delenv("KMLTRACE_PURE", raising=False)
    _not_built(monkeypatch, "_textscan", "_ringscan")
    assert accel.use_accelerator("_ringscan") is None

    def no_scan(*args, **kwargs):
        raise AssertionError("the C scanner ran")
    monkeypatch.setattr(text_scan, "scan", no_scan)
    text = ftrace_text.parse(WORKLOAD / "trace.txt")
    assert text.errors == []
    assert_workload_counts(text.events)
    binary = tracedat.parse(Path(WORKLOAD / "trace.dat"))
    assert binary.errors == []
    assert_workload_counts(binary.events)
