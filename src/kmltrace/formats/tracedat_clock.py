"""trace.dat timestamps as trace-cmd prints them.

The ring buffer counts in its clock's units. libtracecmd (``timestamp_calc`` in
trace-input.c) turns them into what ``trace-cmd report`` prints: with the TSC2NSEC option
(``record -C x86-tsc --tsc2nsec``) ``(ts * mult) >> shift`` nanoseconds, then the OFFSET
option's nanoseconds and the DATE option's microseconds (``record --date``) are added. Done
here on the whole column at once; tests/formats/test_tsc2nsec.py checks it against
``trace-cmd report`` on a real capture.
"""

from __future__ import annotations

import re

import polars as pl

_STRTOLL = re.compile(r"\s*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")


def strtoll(text: str) -> int:
    """C's ``strtoll(text, NULL, 0)``: 0x hex, 0 octal or decimal, up to the first other
    character; 0 when there is no number."""
    m = _STRTOLL.match(text)
    if not m:
        return 0
    digits = m[2]
    value = (int(digits, 16) if digits[:2].lower() == "0x"
             else int(digits, 8) if digits.startswith("0") else int(digits))
    return _int64(-value if m[1] == "-" else value)


def _int64(value: int) -> int:
    """Saturated to a signed 64-bit number, as strtoll does on overflow."""
    return max(-(1 << 63), min((1 << 63) - 1, value))


def offset_ns(options: dict) -> int:
    """The nanoseconds the OFFSET and DATE options add (each may appear more than once)."""
    return _int64(sum(strtoll(t) for t in options.get("ts_offsets", ()))
                  + sum(strtoll(t) * 1000 for t in options.get("dates", ())))


def tsc2nsec(options: dict) -> tuple[int, int] | None:
    """(mult, shift) of a usable TSC2NSEC option, else None."""
    calc = options.get("tsc2nsec")
    if not calc or not calc["mult"] or not 0 <= calc["shift"] < 64:
        return None
    return calc["mult"], calc["shift"]


def corrected(ts: pl.Expr, options: dict) -> pl.Expr | None:
    """`ts` (ring-buffer clock, Int64) as trace-cmd reports it; None when nothing applies."""
    conversion, offset = tsc2nsec(options), offset_ns(options)
    if conversion is None and not offset:
        return None
    out = ts
    if conversion is not None:
        out = mul_shift(ts, *conversion)
    return out + offset if offset else out


def mul_shift(ts: pl.Expr, mult: int, shift: int) -> pl.Expr:
    """``(ts * mult) >> shift`` as libtracecmd's mul_u64_u32_shr (a 128-bit product), exact
    while the result fits in 63 bits: ts = hi * 2**32 + lo, and hi * mult, lo * mult each
    stay below 2**64."""
    t = ts.reinterpret(signed=False)
    low = (t % (1 << 32)) * mult
    high = (t // (1 << 32)) * mult + low // (1 << 32)     # the product's bits 32 and up
    low = low % (1 << 32)
    if shift >= 32:
        out = high // (1 << (shift - 32))
    else:
        out = high * (1 << (32 - shift)) + low // (1 << shift)
    return out.reinterpret(signed=True)
