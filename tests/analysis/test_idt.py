"""IDT gate decoding (synthetic gates, built here from the SDM's layout)."""

import struct

from kmltrace.analysis.idt import decode_gates, ist_by_vector


def gate(handler, selector=0x10, ist=0, kind=0xE, dpl=0, present=True):
    attr = kind | (dpl << 5) | (0x80 if present else 0)
    return struct.pack("<HHBBHII", handler & 0xFFFF, selector, ist, attr,
                       (handler >> 16) & 0xFFFF, handler >> 32, 0)


def test_decode_fields():
    data = (gate(0xFFFFFFFF81A01230, ist=0) + gate(0xFFFFFFFF81A04560, ist=1, kind=0xF, dpl=3)
            + gate(0, present=False))
    gates = decode_gates(data, first_vector=13)
    assert gates[0] == {"vector": 13, "handler": "0xffffffff81a01230", "selector": "0x10",
                        "type": 14, "dpl": 0, "present": True, "ist": 0}
    assert gates[1]["handler"] == "0xffffffff81a04560"
    assert (gates[1]["ist"], gates[1]["type"], gates[1]["dpl"]) == (1, 15, 3)
    assert gates[2]["present"] is False
    assert ist_by_vector(gates) == {13: 0, 14: 1}


def test_partial_gate_is_ignored_and_reserved_ist_bits_masked():
    data = gate(0x1000, ist=0xF9) + b"\x01\x02\x03"
    gates = decode_gates(data)
    assert len(gates) == 1 and gates[0]["ist"] == 1


def test_full_table():
    data = b"".join(gate(0x100000 + 16 * v, ist=1 if v == 8 else 0) for v in range(256))
    gates = decode_gates(data)
    assert len(gates) == 256
    assert gates[255]["handler"] == hex(0x100000 + 16 * 255)
    assert [g["vector"] for g in gates if g["ist"]] == [8]
