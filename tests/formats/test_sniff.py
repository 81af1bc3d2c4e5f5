"""Format detection (kmltrace/formats/sniff.py): the magic bytes that spare a text the
import of the binary readers never change what is detected."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from kmltrace.errors import KmltraceError
from kmltrace.formats import sniff

SAMPLES = Path(__file__).resolve().parents[2] / "sample_traces"


def _every_sample() -> list[Path]:
    return sorted(p for p in SAMPLES.rglob("*") if p.is_file() and p.stat().st_size)


def _unfiltered(head: bytes):
    """The first module whose sniff takes `head`, every module tried (no magic check)."""
    for name in sniff.FORMAT_MODULES:
        module = importlib.import_module(f"kmltrace.formats.{name}")
        if module.sniff(head):
            return module
    return None


def test_the_magic_check_changes_no_detection():
    samples = _every_sample()
    names = set()
    for path in samples:
        try:
            module = sniff.detect(path)
        except KmltraceError:
            module = None
        assert module is _unfiltered(sniff.read_head(path)), path
        names.add(module.NAME if module else None)
    # the samples hold every binary format the magic bytes stand for
    assert {"tracedat", "elf", "vmcore"} <= names, names


@pytest.mark.parametrize("name", ["tracedat", "guest_memory", "elf"])
def test_a_file_with_the_magic_reaches_the_module(name):
    magic = dict(sniff.FORMATS)[name]
    module = importlib.import_module(f"kmltrace.formats.{name}")
    assert magic and list(sniff._modules(magic[0] + b"\0" * 64)).count(module) == 1
    assert module not in list(sniff._modules(b"# tracer: nop\n"))


def test_a_text_is_detected_without_numpy():
    text = SAMPLES / "host-6.18-workload" / "trace.txt"
    code = ("import sys; from pathlib import Path; from kmltrace.formats.sniff import detect; "
            f"print(detect(Path({str(text)!r})).NAME, 'numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["ftrace_text", "False"]
