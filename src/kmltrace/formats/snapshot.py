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
    parsed.meta["snapshot"] = snap
    parsed.meta["idt"] = snap.get("idt") or []
    kernel = snap["kernel"]
    if isinstance(kernel.get("cpus"), int):
        parsed.meta["cpus"] = kernel["cpus"]
    if isinstance(kernel.get("release"), str):
        parsed.meta["kernel"] = kernel["release"]
    return parsed
