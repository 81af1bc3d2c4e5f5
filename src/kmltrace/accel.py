"""The optional C accelerators (built by setup.py when a compiler is there).

Each accelerator has a pure polars/numpy twin that is both the fallback and the reference the
tests compare it with. ``KMLTRACE_PURE=1`` forces the pure path (tests, and a user who
suspects the C code).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType


def use_accelerator(name: str) -> ModuleType | None:
    """``kmltrace.formats.<name>`` if it is built and not switched off, else None."""
    if os.environ.get("KMLTRACE_PURE") == "1":
        return None
    try:
        return importlib.import_module(f"kmltrace.formats.{name}")
    except ImportError:
        return None


def built(name: str) -> bool:
    """Whether the accelerator was compiled at install time (whatever KMLTRACE_PURE says)."""
    try:
        importlib.import_module(f"kmltrace.formats.{name}")
    except ImportError:
        return False
    return True
