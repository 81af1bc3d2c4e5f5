#!/usr/bin/env python3
"""Make a SYNTHETIC host-guest trace.dat: a REAL guest recording with a made-up TIME_SHIFT
option, and what the host's own `trace-cmd report -t` prints for it.

A host-guest recording (`trace-cmd record -A`, guest and host clocks synced over vsock)
cannot be made here (no vhost-vsock, and `trace-cmd record` fails on this host). What such
a recording leaves in the guest's file is one option, TIME_SHIFT: per guest CPU, samples of
(time, offset to the host clock, scaling, fraction bits). This script puts one in a real
file, sample_traces/guest-6.12-tracecmd/tsc2nsec.dat (a 6.12 guest, `record -C x86-tsc
--tsc2nsec`: TSC counts in its ring buffer), as trace-cmd's own tools can carry it:

1. `trace-cmd convert` to file version 6 (options as a plain list);
2. its two CPUSTAT options (one per CPU, adjacent) are replaced by one TIME_SHIFT option of
   the same total length, so no file offset moves (CPUSTAT only holds buffer statistics);
3. `trace-cmd convert` back to version 7 with zstd (the file committed, `time-shift.dat`);
4. the host's `trace-cmd report -t` of it (nanosecond times) is kept: libtracecmd applies
   the TIME_SHIFT (timestamp_host_sync), then TSC2NSEC, and merges the CPUs by the result.

The samples (SAMPLES below, in the guest's TSC counts) put events before, between and after
the samples of each CPU, with interpolation on and a scaling on CPU 1, so the CPUs' events
change order. Everything but the option is the real recording.

    python3 sample_traces/synthetic/make_time_shift.py [OUT_DIR]
"""

from __future__ import annotations

import hashlib
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent / "guest-6.12-tracecmd" / "tsc2nsec.dat"
OUT = HERE / "time-shift"
OPT_CPUSTAT, OPT_TIME_SHIFT = 2, 12
INTERPOLATE = 1
PEER_TRACE_ID = 0x6B6D6C7472616365          # "kmltrace", the host's trace id
#: per guest CPU: (time, offset, scaling, fraction) samples, in guest TSC counts; the
#: capture's CPU 0 spans 15 040 540 628-15 157 217 312, CPU 1 15 047 606 936-15 162 737 109
SAMPLES = [
    [(15_000_000_000, 5_000_000, 1, 0), (15_100_000_000, -3_000_000, 1, 0),
     (15_200_000_000, 1_000_000, 1, 0)],
    [(15_060_000_000, -20_000_000, (1 << 20) + 3, 20), (15_080_000_000, 40_000_000, 1, 0),
     (15_120_000_000, 0, 1, 0), (15_150_000_000, 7_777_777, (1 << 20) - 5, 20)],
]


def time_shift_option(samples: list, size: int) -> bytes:
    """The TIME_SHIFT option's data (trace-cmd.dat.v7(5)), zero-padded to `size` bytes
    (libtracecmd reads the fractions when bytes remain, and nothing after them)."""
    data = struct.pack("<QIi", PEER_TRACE_ID, INTERPOLATE, len(samples))
    for cpu in samples:
        data += struct.pack("<i", len(cpu))
        for column in range(3):
            data += struct.pack(f"<{len(cpu)}q", *(s[column] for s in cpu))
    for cpu in samples:
        data += struct.pack(f"<{len(cpu)}q", *(s[3] for s in cpu))
    if len(data) > size:
        raise SystemExit(f"the option needs {len(data)} bytes, the CPUSTAT options hold {size}")
    return data + bytes(size - len(data))


def replace_cpustats(v6: bytes, samples: list) -> bytes:
    """`v6` with its first two adjacent CPUSTAT options made into one TIME_SHIFT option."""
    start = v6.find(b"CPU: 0\n") - 6
    first_id, first_size = struct.unpack_from("<HI", v6, start)
    second = start + 6 + first_size
    second_id, second_size = struct.unpack_from("<HI", v6, second)
    if (first_id, second_id) != (OPT_CPUSTAT, OPT_CPUSTAT) or \
            not v6.startswith(b"CPU: 1\n", second + 6):
        raise SystemExit("no two adjacent CPUSTAT options (CPU 0, CPU 1) found")
    end = second + 6 + second_size
    size = end - start - 6
    option = struct.pack("<HI", OPT_TIME_SHIFT, size) + time_shift_option(samples, size)
    return v6[:start] + option + v6[end:]


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kmlshift-") as work:
        v6, shifted = Path(work) / "v6.dat", Path(work) / "shifted-v6.dat"
        subprocess.run(["trace-cmd", "convert", "-i", str(SOURCE), "-o", str(v6),
                        "--file-version", "6", "--compression", "none"], check=True,
                       capture_output=True)
        shifted.write_bytes(replace_cpustats(v6.read_bytes(), SAMPLES))
        subprocess.run(["trace-cmd", "convert", "-i", str(shifted), "-o",
                        str(out / "time-shift.dat"), "--file-version", "7", "--compression",
                        "zstd"], check=True, capture_output=True)
    report = subprocess.run(["trace-cmd", "report", "-t", "-i", "time-shift.dat"], cwd=out,
                            check=True, capture_output=True, text=True)
    (out / "report-t.txt").write_text(report.stdout)
    version = subprocess.run(["trace-cmd", "-h"], capture_output=True, text=True,
                             check=False).stdout
    version = next((line.strip() for line in version.splitlines() if "version" in line), "?")
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()
    rows = "\n".join(f"| {cpu} | {t:,} | {o:,} | {s} | {f} |" for cpu, samples in
                     enumerate(SAMPLES) for t, o, s, f in samples)
    (out / "PROVENANCE.md").write_text(PROVENANCE.format(version=version, digest=digest,
                                                          rows=rows, peer=PEER_TRACE_ID))
    print(f"wrote {out}")
    return 0


PROVENANCE = """# synthetic/time-shift: SYNTHETIC TIME_SHIFT option in a real guest recording

SYNTHETIC in one option only. `time-shift.dat` is the real recording
`sample_traces/guest-6.12-tracecmd/tsc2nsec.dat` (sha256 {digest}; Debian 6.12 in a QEMU
TCG guest, `trace-cmd record -C x86-tsc --tsc2nsec`, see its PROVENANCE.md) with a made-up
TIME_SHIFT option, the option a host-guest recording (`trace-cmd record -A`) leaves in the
guest's file. A host-guest recording cannot be made here (no vhost-vsock; `trace-cmd
record` fails on this host).

Made by `python3 sample_traces/synthetic/make_time_shift.py` with the host's {version}:

    trace-cmd convert -i tsc2nsec.dat -o v6.dat --file-version 6 --compression none
    (the two CPUSTAT options of v6.dat replaced by one TIME_SHIFT option of the same length)
    trace-cmd convert -i shifted-v6.dat -o time-shift.dat --file-version 7 --compression zstd
    trace-cmd report -t -i time-shift.dat > report-t.txt

The option: peer trace id {peer:#x}, flags 1 (interpolate), samples in guest TSC counts:

| cpu | time | offset | scaling | fraction bits |
|---|---|---|---|---|
{rows}

`report-t.txt` is what the real trace-cmd prints for it (libtracecmd's timestamp_host_sync,
then TSC2NSEC, CPUs merged by the result), in nanoseconds: the reference of
tests/formats/test_time_shift.py.
"""

if __name__ == "__main__":
    raise SystemExit(main())
