"""The analysis must judge a lab run from the CPU's evidence alone: it never imports the lab."""

import subprocess
import sys
from pathlib import Path

import kmltrace

ANALYSIS = Path(kmltrace.__file__).parent / "analysis"


def test_analysis_sources_do_not_mention_the_lab():
    offenders = [p.name for p in ANALYSIS.rglob("*.py")
                 if "kmltrace.lab" in p.read_text() or "from kmltrace import lab" in p.read_text()
                 or "from .. import lab" in p.read_text() or "from ..lab" in p.read_text()]
    assert offenders == []


def test_importing_every_analysis_module_leaves_the_lab_unloaded():
    modules = sorted(p.stem for p in ANALYSIS.glob("*.py") if p.stem != "__init__")
    assert "idt" in modules
    code = ("import importlib, sys\n"
            f"for m in {modules!r}:\n"
            "    importlib.import_module('kmltrace.analysis.' + m)\n"
            "print(sorted(n for n in sys.modules if n.startswith('kmltrace.lab')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
