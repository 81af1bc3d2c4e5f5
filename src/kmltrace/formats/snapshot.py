"""A snapshot JSON written by ``kmltrace snapshot`` as a TARGET (format "snapshot").

No events: ``meta["snapshot"]`` is the object (CONTRACT.md, docs/snapshot.md), ``meta["idt"]``
its gates, ``meta["cpus"]`` and ``meta["kernel"]`` (release) for the kernel summary.  The
analyses read IST configuration and tasks from there.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from kmltrace.errors import InputError
from kmltrace.formats import Parsed

NAME = "snapshot"
#: the object starts with its "kernel" key (json.dumps keeps insertion order)
_HEAD = re.compile(rb'\A\s*\{\s*"kernel"\s*:\s*\{')
MAX_BYTES = 1 << 30


def sniff(head: bytes) -> bool:
    return bool(_HEAD.match(head))


def parse(path: Path) -> Parsed:
    parsed = Parsed(path=str(path), format=NAME)
    if path.stat().st_size > MAX_BYTES:
        raise InputError(f"snapshot larger than {MAX_BYTES >> 20} MiB", path=str(path))
    text = path.read_bytes()
    try:
        snap = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        line = getattr(e, "lineno", None)
        offset = None if line else getattr(e, "start", None)
        raise InputError(f"not valid snapshot JSON: {getattr(e, 'msg', None) or e}",
                         path=str(path), line=line, offset=offset) from None
    if not isinstance(snap, dict) or not isinstance(snap.get("kernel"), dict):
        raise InputError("JSON without a snapshot's \"kernel\" object", path=str(path), line=1)
    for key in ("cpus", "idt", "tasks", "incidents"):
        value = snap.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise InputError(f"snapshot \"{key}\" is not a list of objects", path=str(path))
    problem = _shape_problem(snap)
    if problem:
        raise InputError(f"snapshot {problem}", path=str(path))
    parsed.meta["snapshot"] = snap
    parsed.meta["idt"] = snap.get("idt") or []
    kernel = snap["kernel"]
    if isinstance(kernel.get("cpus"), int):
        parsed.meta["cpus"] = kernel["cpus"]
    if isinstance(kernel.get("release"), str):
        parsed.meta["kernel"] = kernel["release"]
    return parsed


#: (list, field, accepted types) the analyses rely on
_FIELDS = [("idt", "vector", (int,)), ("idt", "ist", (int,)), ("tasks", "pid", (int,)),
           ("tasks", "mode", (str,)), ("tasks", "comm", (str,)), ("tasks", "evidence", (list,)),
           ("cpus", "cpu", (int,)), ("cpus", "tss", (dict,)), ("cpus", "ist_mapped", (list,)),
           ("tasks", "stack_vma", (list,)), ("tasks", "sp_mapped_below", (int,))]
_HEX_FIELDS = [("tasks", ("cs", "ss", "ip", "sp", "gs_base")), ("cpus", ("gs_base",)),
               ("idt", ("handler",))]


def _shape_problem(snap: dict) -> str | None:
    """What in `snap` has the wrong type (so that no analysis trips on it), or None."""
    for key, name, types in _FIELDS:
        for i, entry in enumerate(snap.get(key) or []):
            if name in entry and entry[name] is not None and (
                    not isinstance(entry[name], types) or isinstance(entry[name], bool)
                    and bool not in types):
                return f"{key}[{i}].{name} has the wrong type"
    for key, names in _HEX_FIELDS:
        for i, entry in enumerate(snap.get(key) or []):
            for name in names:
                value = entry.get(name)
                if value is not None and not _is_hex(value):
                    return f"{key}[{i}].{name} is not a hex string"
    for i, cpu in enumerate(snap.get("cpus") or []):
        ist = (cpu.get("tss") or {}).get("ist", [])
        if not isinstance(ist, list) or not all(_is_hex(v) for v in ist):
            return f"cpus[{i}].tss.ist is not a list of hex strings"
    return None


def _is_hex(value) -> bool:
    try:
        int(value, 16)
        return isinstance(value, str)
    except (TypeError, ValueError):
        return False
