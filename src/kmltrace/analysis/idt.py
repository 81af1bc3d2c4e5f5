"""Decode x86-64 IDT gates from raw bytes (SDM vol. 3, 6.14.1, "64-bit mode IDT").

Each gate is 16 bytes::

    bytes 0-1   offset 15:0        bytes 2-3   segment selector
    byte  4     bits 2:0 IST       byte  5     type (3:0), 0, DPL (6:5), present (7)
    bytes 6-7   offset 31:16       bytes 8-11  offset 63:32      bytes 12-15 reserved

The result is the snapshot object's ``"idt"`` list of CONTRACT.md.  Whole-array numpy, no
per-gate arithmetic in Python beyond building the output dicts.
"""

from __future__ import annotations

import numpy as np

from kmltrace.output import hexstr

GATE_BYTES = 16
#: gate types of 64-bit mode
INTERRUPT_GATE = 0xE
TRAP_GATE = 0xF

_GATE = np.dtype([("offset_low", "<u2"), ("selector", "<u2"), ("ist", "u1"), ("attr", "u1"),
                  ("offset_mid", "<u2"), ("offset_high", "<u4"), ("reserved", "<u4")])


def decode_gates(data: bytes, first_vector: int = 0) -> list[dict]:
    """The gates in `data` (a multiple of 16 bytes is used; a partial gate at the end is
    ignored), as ``{"vector", "handler", "selector", "type", "dpl", "present", "ist"}``."""
    count = len(data) // GATE_BYTES
    gates = np.frombuffer(data[:count * GATE_BYTES], dtype=_GATE)
    handler = (gates["offset_low"].astype(np.uint64)
               | (gates["offset_mid"].astype(np.uint64) << np.uint64(16))
               | (gates["offset_high"].astype(np.uint64) << np.uint64(32)))
    attr = gates["attr"]
    kind = (attr & 0xF).tolist()
    dpl = ((attr >> 5) & 3).tolist()
    present = (attr >> 7).astype(bool).tolist()
    ist = (gates["ist"] & 7).tolist()
    selector = gates["selector"].tolist()
    handler = handler.tolist()
    return [{"vector": first_vector + i, "handler": hexstr(handler[i]),
             "selector": hexstr(selector[i]), "type": kind[i], "dpl": dpl[i],
             "present": present[i], "ist": ist[i]} for i in range(count)]


def ist_by_vector(gates: list[dict]) -> dict[int, int]:
    """Vector -> IST index of the present gates (0 = no IST)."""
    return {g["vector"]: g["ist"] for g in gates if g.get("present")}
