"""ELF TARGETs (a vmlinux or a program): no events, only symbols for the other inputs.

Core files (ET_CORE, QEMU's dump-guest-memory) belong to the ``vmcore`` format
(guest_memory.py), which is tried first; this module declines them as well.
"""

from __future__ import annotations

import struct
from pathlib import Path

from kmltrace.formats import Parsed
from kmltrace.formats.sniff import ELF_MAGIC
from kmltrace.errors import KmltraceError
from kmltrace.symbols.readers import open_elf

NAME = "elf"
ET_CORE = 4


def sniff(head: bytes) -> bool:
    if len(head) < 18 or head[:4] != ELF_MAGIC or head[5] not in (1, 2):
        return False
    e_type = struct.unpack_from("<H" if head[5] == 1 else ">H", head, 16)[0]
    return e_type != ET_CORE


def parse(path: Path) -> Parsed:
    """Check the header and the tables (so damage shows here, in one line); the symbols are
    read, and cached, when a verb needs them."""
    f, elf = open_elf(path)
    with f:
        meta = {"elf": str(path), "elf_class": elf.elfclass,
                "elf_machine": elf["e_machine"], "elf_type": elf["e_type"]}
    from kmltrace.symbols.service import load_table
    try:
        load_table(path)            # fills the symbol cache for the verbs
    except KmltraceError as e:
        return Parsed(path=str(path), format=NAME, errors=[e])
    return Parsed(path=str(path), format=NAME, meta=meta)
