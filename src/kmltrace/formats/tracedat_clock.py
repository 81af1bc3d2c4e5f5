"""trace.dat timestamps as trace-cmd prints them.

The ring buffer counts in its clock's units. libtracecmd (``timestamp_calc`` in
trace-input.c) turns them into what ``trace-cmd report`` prints: a guest's file with the
TIME_SHIFT option (host-guest recordings, ``trace-cmd record -A``) first moves each CPU's
times onto the host's clock, by the offsets (and scaling) sampled while recording; then with
the TSC2NSEC option (``record -C x86-tsc --tsc2nsec``) ``(ts * mult) >> shift`` nanoseconds,
then the OFFSET option's nanoseconds and the DATE option's microseconds (``record --date``)
are added. Done here on whole columns at once; tests/formats/test_tsc2nsec.py checks
TSC2NSEC against ``trace-cmd report`` on a real capture, test_time_shift.py TIME_SHIFT.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

import numpy as np
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


# -- TIME_SHIFT: a guest's clock onto its host's -------------------------------------------------

#: TRACECMD_TSYNC_FLAG_INTERPOLATE: offsets between two samples are interpolated
INTERPOLATE = 1


@dataclass
class TimeShift:
    """A TIME_SHIFT option: per CPU, samples (time, offset, scaling, fraction) sorted by time,
    one per time (libtracecmd's tsync_cpu_offsets_load)."""
    peer_trace_id: int
    flags: int
    cpus: list[np.ndarray]        # per CPU: int64 array of shape (4, samples)

    def summary(self) -> dict:
        return {"peer_trace_id": f"{self.peer_trace_id:#x}", "cpus": len(self.cpus),
                "samples": [int(c.shape[1]) for c in self.cpus],
                "interpolate": bool(self.flags & INTERPOLATE)}


def parse_time_shift(data: bytes) -> TimeShift:
    """The option's bytes: trace id (8), flags (4), CPU count (4), per CPU a sample count (4)
    and its times, offsets, scalings (8 bytes each); then, if bytes remain, per CPU its
    fractions (scaling's fraction bits). ValueError if the data ends early."""
    if len(data) < 16:
        raise ValueError(f"{len(data)} bytes, fewer than its 16-byte head")
    peer, flags, count = struct.unpack_from("<QIi", data)
    pos = 16
    # each CPU needs at least its 4-byte count: a larger count cannot be real
    if count < 0 or count * 4 > len(data) - pos:
        raise ValueError(f"{count} CPUs in {len(data)} bytes")
    cpus = []
    for cpu in range(count):
        if pos + 4 > len(data):
            raise ValueError(f"cut short in cpu{cpu}'s sample count")
        n, = struct.unpack_from("<i", data, pos)
        pos += 4
        if n < 0 or pos + 24 * n > len(data):
            raise ValueError(f"cpu{cpu}: {n} samples do not fit in the option")
        samples = np.zeros((4, n), np.int64)
        samples[:3] = np.frombuffer(data, "<i8", 3 * n, pos).reshape(3, n)
        pos += 24 * n
        cpus.append(samples)
    if pos < len(data):
        for cpu, samples in enumerate(cpus):
            n = samples.shape[1]
            if pos + 8 * n > len(data):
                raise ValueError(f"cut short in cpu{cpu}'s scaling fractions")
            samples[3] = np.frombuffer(data, "<i8", n, pos)
            pos += 8 * n
    for cpu, samples in enumerate(cpus):
        order = np.argsort(samples[0], kind="stable")
        samples = samples[:, order]
        first = np.concatenate([[True], samples[0, 1:] != samples[0, :-1]])
        cpus[cpu] = samples[:, first]
    return TimeShift(peer, flags, cpus)


def host_sync(ts: np.ndarray, cpu: np.ndarray, shift: TimeShift) -> np.ndarray:
    """`ts` (int64, the guest's ring-buffer clock) on the host's clock, per `cpu`, as
    libtracecmd's timestamp_host_sync: the two samples around each time (the first or last
    two outside them), the offset interpolated between them if the flags say so, the time
    scaled by ``scaling >> fraction`` of the earlier one. Unsigned 64-bit arithmetic that
    wraps, as in C. Rows of a CPU without samples keep their time."""
    out = ts.copy()
    for c, samples in enumerate(shift.cpus):
        n = samples.shape[1]
        rows = np.flatnonzero(cpu == c)
        if not rows.size or not n:
            continue
        t = ts[rows].view(np.uint64)
        times, offsets, scaling, fraction = samples
        if n == 1:
            out[rows] = (t + offsets[0].astype(np.uint64)).view(np.int64)
            continue
        # libtracecmd compares the unsigned time with the samples' times
        k = np.searchsorted(times.view(np.uint64), t, side="right") - 1
        k = np.clip(k, 0, n - 2)
        lo, hi = k, k + 1
        if shift.flags & INTERPOLATE:
            with np.errstate(all="ignore"):
                delta = times[hi] - times[lo]
                moved = (t.view(np.int64) - times[lo]) * (offsets[hi] - offsets[lo])
                correction = offsets[lo] + _c_div(moved + _c_div(delta, 2), delta)
        else:
            correction = offsets[lo]
        with np.errstate(all="ignore"):
            scaled = (t * scaling[lo].view(np.uint64)) >> (fraction[lo].view(np.uint64)
                                                            & np.uint64(63))
            out[rows] = (scaled + correction.view(np.uint64)).view(np.int64)
    return out


def _c_div(a, b):
    """C's signed division, which truncates toward zero (numpy's // floors); 0 where b is
    0 (libtracecmd would divide by zero: two samples of one time are merged before)."""
    b = np.broadcast_to(b, np.shape(a)).astype(np.int64)
    safe = np.where(b == 0, 1, b)
    q = np.abs(a) // np.abs(safe)
    q = np.where((a < 0) != (safe < 0), -q, q)
    return np.where(b == 0, 0, q)
