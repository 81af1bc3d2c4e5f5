"""Build a scenario's kernel with gcc and binutils, once, into a cache keyed by source hash.

The cache lives under ``$XDG_CACHE_HOME/kmltrace/lab`` (default ``~/.cache/kmltrace/lab``);
an entry's name carries the sha256 of the sources and the scenario, so a changed source
builds anew and an unchanged one is reused.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from kmltrace.errors import RefusedError

SOURCE_DIR = Path(__file__).resolve().parent / "kernel"
SOURCES = ("kernel.S", "lab.h", "linker.ld")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kmltrace" / "lab"


def source_hash() -> str:
    """sha256 over the kernel sources (names and contents), in a fixed order."""
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update(name.encode() + b"\0" + (SOURCE_DIR / name).read_bytes() + b"\0")
    return digest.hexdigest()


def kernel_path(define: str) -> Path:
    """Where the kernel built with ``-DSCENARIO=<define>`` is cached."""
    return cache_dir() / f"{source_hash()[:16]}-{define.lower()}.elf"


def build_kernel(define: str) -> Path:
    """The ELF kernel of one scenario (``define`` is its SC_... name), built if not cached."""
    target = kernel_path(define)
    if target.is_file():
        return target
    for tool in ("gcc", "ld"):
        if shutil.which(tool) is None:
            raise RefusedError(f"building the lab kernels needs {tool} (gcc and binutils)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        obj = Path(tmp) / "kernel.o"
        elf = Path(tmp) / "kernel.elf"
        _run(["gcc", "-c", f"-DSCENARIO={define}", "-I", str(SOURCE_DIR),
              str(SOURCE_DIR / "kernel.S"), "-o", str(obj)])
        _run(["ld", "-m", "elf_x86_64", "-nostdlib", "-z", "max-page-size=0x1000",
              "-T", str(SOURCE_DIR / "linker.ld"), str(obj), "-o", str(elf)])
        os.replace(elf, target)  # atomic: a concurrent build of the same kernel is harmless
    return target


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise RefusedError(f"building the lab kernel failed: {' '.join(argv)}: "
                           f"{result.stderr.strip().splitlines()[-1:] or result.returncode}")
