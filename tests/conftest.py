"""Shared test helpers.

System tests need root, tracefs, QEMU, KVM or a real kernel image. Where the machine lacks
one they skip with the reason, and with KMLTRACE_REQUIRE_SYSTEM=1 (set by .ci/run) they fail
instead, so a CI machine that should have them cannot pass by skipping.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "sample_traces"
TRACEFS = Path("/sys/kernel/tracing")


def require(condition: bool, reason: str) -> None:
    """Skip (or fail, under KMLTRACE_REQUIRE_SYSTEM=1) unless `condition` holds."""
    if condition:
        return
    if os.environ.get("KMLTRACE_REQUIRE_SYSTEM") == "1":
        pytest.fail(f"KMLTRACE_REQUIRE_SYSTEM=1 but {reason}")
    pytest.skip(reason)


def require_accelerator(name: str) -> None:
    """The C accelerator `name` (kmltrace.formats.<name>) is built and switched on."""
    from kmltrace import accel
    require(accel.built(name), f"the {name} C accelerator is not built (needs gcc and the "
                               "Python headers at install time)")
    require(os.environ.get("KMLTRACE_PURE") != "1", "KMLTRACE_PURE=1 switches it off")


def require_root() -> None:
    require(os.geteuid() == 0, "needs root")


def require_tracefs() -> None:
    require_root()
    require((TRACEFS / "instances").is_dir(), f"tracefs is not mounted at {TRACEFS}")


def require_binary(name: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"needs {name} on PATH")
    return path


def require_qemu() -> str:
    return require_binary("qemu-system-x86_64")


@pytest.fixture
def samples() -> Path:
    return SAMPLES
