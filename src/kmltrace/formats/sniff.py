"""Detect an input's format from its content, never from its name."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from kmltrace.errors import InputError, KmltraceError, UnknownFormatError
from kmltrace.formats import Parsed

#: Format modules in the order they are tried: binary and strongly marked formats first,
#: the loosest text formats last. Each module of kmltrace.formats exposes NAME, sniff(head),
#: parse(path); beside it, the bytes a file of the format starts with (one of them), or None:
#: a module whose magic the file lacks is not imported at all (the binary readers pull in
#: numpy, a tenth of a second of every text's ingest).
#: the binary formats' magic bytes, here so that a file is checked before its reader is
#: imported (the readers take them from here)
TRACEDAT_MAGIC = b"\x17\x08\x44tracing"
ELF_MAGIC = b"\x7fELF"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

FORMATS: list[tuple[str, tuple[bytes, ...] | None]] = [
    ("tracedat", (TRACEDAT_MAGIC,)),      # trace-cmd's trace.dat
    ("perf_data", None),      # binary: magic PERFILE2 (read through perf script)
    # the ELF core of dump-guest-memory, or its zstd
    ("guest_memory", (ELF_MAGIC, ZSTD_MAGIC)),
    ("elf", (ELF_MAGIC,)),    # any other ELF (vmlinux, programs): symbols only
    ("snapshot", None),       # JSON starting {"kernel": {...}: written by kmltrace snapshot
    ("kallsyms", None),       # every line "ADDR TYPE NAME[\t[module]]": /proc/kallsyms, System.map
    ("qemu_log", None),       # QEMU -d int,cpu_reset: before console and the loose ftrace text
    ("console", None),        # serial console / dmesg
    ("tracecmd_report", None),
    ("perf_script", None),
    ("ftrace_text", None),    # loosest text grammar: after the other trace texts
]
FORMAT_MODULES: list[str] = [name for name, _ in FORMATS]

HEAD_BYTES = 64 * 1024


def _modules(head: bytes | None = None):
    """The format modules to try on a file starting with `head` (every one for None)."""
    for name, magic in FORMATS:
        if head is None or magic is None or head.startswith(magic):
            yield importlib.import_module(f"kmltrace.formats.{name}")


def read_head(path: Path, size: int = HEAD_BYTES) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror or e}", path=str(path)) from None


def detect(path: Path):
    """The format module that understands the file at `path`, or raise UnknownFormatError."""
    if path.is_dir():
        raise InputError("is a directory but not a kmltrace bundle (no bundle.json)", path=str(path))
    head = read_head(path)
    if not head:
        raise InputError("empty file", path=str(path))
    for module in _modules(head):
        if module.sniff(head):
            return module
    raise UnknownFormatError("not a supported format (trace text, trace.dat, perf script, "
                             "QEMU log, console log, snapshot or ELF)", path=str(path), line=1)


def parse_file(path: Path) -> Parsed:
    """Parse one file of any supported format; never raises for a bad input."""
    try:
        module = detect(path)
    except KmltraceError as e:
        return Parsed(path=str(path), format="unknown", errors=[e])
    try:
        return module.parse(path)
    except KmltraceError as e:
        return Parsed(path=str(path), format=module.NAME, errors=[e])
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as e:  # a parser bug must not cost the other inputs: report it in one line
        if os.environ.get("KMLTRACE_DEBUG"):
            raise
        return Parsed(path=str(path), format=module.NAME,
                      errors=[InputError(f"internal error in the {module.NAME} parser: "
                                         f"{type(e).__name__}: {e}", path=str(path))])
