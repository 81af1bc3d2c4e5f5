"""A ``/proc/kallsyms`` snapshot or a ``System.map`` as a TARGET: symbols for the other inputs.

No events; meta ``kallsyms`` (path) is what the symbol service reads (a bundle's own
``kallsyms`` file is found without this).
"""

from __future__ import annotations

import re
from pathlib import Path

from kmltrace.formats import Parsed

NAME = "kallsyms"
_LINE = re.compile(rb"^[0-9a-f]{8,16} [A-Za-z] [^\s]+(\t\[[^\]\s]+\])?$")


def sniff(head: bytes) -> bool:
    lines = [line for line in head.split(b"\n")[:200] if line]
    if len(head) == 64 * 1024 and len(lines) > 1:
        lines = lines[:-1]                    # the last line of a cut head may be partial
    return len(lines) >= 3 and all(_LINE.match(line) for line in lines)


def parse(path: Path) -> Parsed:
    """Read the table once (it is cached, and errors such as hidden addresses show here)."""
    from kmltrace.symbols.service import load_table
    load_table(path)
    return Parsed(path=str(path), format=NAME, meta={"kallsyms": str(path)})
