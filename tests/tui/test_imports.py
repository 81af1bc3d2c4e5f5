"""The analysis must stay usable without a terminal UI: none of it imports textual."""

from __future__ import annotations

import subprocess
import sys

ANALYSIS_MODULES = ["kmltrace.capture", "kmltrace.analysis", "kmltrace.formats",
                    "kmltrace.report", "kmltrace.tui.model", "kmltrace.tui.session",
                    "kmltrace.tui.incident_model"]


def test_analysis_modules_do_not_import_textual():
    code = f"""
import importlib, pkgutil, sys
names = {ANALYSIS_MODULES!r}
for name in list(names):
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != name:           # a module that exists but fails to import is a failure
            raise
        continue
    for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
        importlib.import_module(f"{{name}}.{{info.name}}")
imported = sorted(m for m in sys.modules if m.startswith("kmltrace."))
assert "kmltrace.analysis.events" in imported, imported
assert "kmltrace.capture" in imported, imported
leaked = sorted(m for m in sys.modules if m == "textual" or m.startswith("textual."))
print("LEAKED", leaked)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "LEAKED []" in out.stdout


def test_the_tui_does_import_textual():
    """The check above can fail: importing the app does pull textual in."""
    code = "import sys, kmltrace.tui.app; print('textual' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == "True", out.stderr


def test_the_first_screen_does_not_wait_for_polars():
    """The app module and the first screen import no polars: it loads in the background."""
    code = ("import sys, kmltrace.tui.app, kmltrace.tui.incidents, kmltrace.tui.picker; "
            "print('polars' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == "False", out.stderr
