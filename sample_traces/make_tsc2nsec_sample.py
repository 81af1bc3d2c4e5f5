#!/usr/bin/env python3
"""Regenerate sample_traces/guest-6.12-tsc2nsec: a real trace.dat recorded with the x86-tsc
clock and ``--tsc2nsec`` (its timestamps are TSC counts; the TSC2NSEC option says how
trace-cmd turns them into nanoseconds).

    python3 sample_traces/make_tsc2nsec_sample.py [OUT_DIR]

``trace-cmd record`` fails on this host (EPERM), so it runs in the 6.12 TCG guest of
guest_capture.py: the host's own trace-cmd build and the shared libraries ldd names are put in
the initramfs. In the guest, ``trace-cmd record -C x86-tsc --tsc2nsec`` records page faults and
raw_syscalls while ``bootwork exit`` runs (PAGES fresh pages, CALLS getppid() calls). On the
host, the file is kept as recorded (v7, zstd) and printed by the host's ``trace-cmd report``
(the reference for the tests).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import guest_capture as guest

HERE = Path(__file__).resolve().parent
OUT = HERE / "guest-6.12-tsc2nsec"
RECORD = ("trace-cmd record -C x86-tsc --tsc2nsec -e exceptions:page_fault_user "
          "-e raw_syscalls -o /tmp/save/trace.dat /bootwork exit")

INIT = guest.PROLOGUE + f"""mkdir -p /tmp/save
cd /tmp
{RECORD} > /tmp/save/record.log 2>&1
echo "kmltsc: record exit $?"
""" + guest.save_and_power_off("/tmp/save")


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    run, saved = guest.run(INIT, guest.with_libraries("trace-cmd"))
    try:
        if "kmltsc: record exit 0" not in run.console:
            raise RuntimeError("trace-cmd record failed in the guest:\n"
                               + (saved / "record.log").read_text(errors="replace")[-800:])
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        shutil.copyfile(saved / "trace.dat", out / "trace.dat")
        shutil.copyfile(saved / "record.log", out / "record.log")
    finally:
        shutil.rmtree(saved.parent, ignore_errors=True)
    # (a v6 copy, `trace-cmd convert --file-version 6`, is 6.9 MB of uncompressed kallsyms:
    # tests/formats/test_tsc2nsec.py makes it when it runs)
    commands = [["trace-cmd", "report", "-i", "trace.dat"]]
    for argv in commands:
        result = subprocess.run(argv, cwd=out, capture_output=True, text=True, check=True)
        if argv[1] == "report":
            (out / f"{Path(argv[3]).stem}-report.txt").write_text(result.stdout)
    (out / "guest-console.log").write_text(run.console)
    options = subprocess.run(["trace-cmd", "dump", "--options", "-i", "trace.dat"], cwd=out,
                             capture_output=True, text=True).stdout
    expected = {**run.bootwork, "getppid_nr": 110,
                "source": "bootwork's console line (guest-console.log)"}
    (out / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")
    tsc = options[options.find("[Option TSC2NSEC"):].splitlines()[:2]
    (out / "PROVENANCE.md").write_text(PROVENANCE.format(
        release=run.release, qemu=guest.qemu_version(), argv=" ".join(run.argv),
        date=datetime.date.today().isoformat(), seconds=run.seconds, record=RECORD,
        host=os.uname().release, tsc="\n".join(tsc), tracecmd=_version(),
        host_commands="\n".join("    " + " ".join(c) + (" > " + Path(c[3]).stem + "-report.txt"
                                                       if c[1] == "report" else "")
                                for c in commands),
        files="\n".join(f"- `{p.name}` (sha256 {hashlib.sha256(p.read_bytes()).hexdigest()[:16]}...)"
                        for p in sorted(out.iterdir()) if p.name != "PROVENANCE.md"),
        **run.bootwork))
    print(f"wrote {out} ({run.seconds:.0f} s in the guest)")
    return 0


def _version() -> str:
    out = subprocess.run(["trace-cmd", "-h"], capture_output=True, text=True)
    return next((line.strip() for line in (out.stdout + out.stderr).splitlines()
                 if "version" in line), "unknown")


PROVENANCE = """# guest-6.12-tsc2nsec: trace.dat with the x86-tsc clock and --tsc2nsec

Real data. Kernel: Debian `{release}` (bookworm-backports cloud image), under {qemu} TCG
(`-cpu qemu64,-cx16 -m 1G -smp 2`); busybox-static initramfs with the host's {tracecmd} and
the shared libraries `ldd` names for it; host kernel {host}; {date}. `trace-cmd record` fails
on the host itself (EPERM), hence a guest.

Made by `python3 sample_traces/make_tsc2nsec_sample.py` (one boot, {seconds:.0f} s):

    {argv}

In the guest (init, after mounting proc, sys, dev and tracefs):

    {record}

The workload: `bootwork exit` (tests/system/boot_trace_guest.py), pid {pid}: {pages} fresh
pages touched in its mmap region {region}, then {calls} `getppid()` calls (syscall 110), as its
console line in `guest-console.log` says; `expected.json` holds those numbers.

The file's TSC2NSEC option (`trace-cmd dump --options`):

    {tsc}

Its ring-buffer timestamps are TSC counts; `trace-cmd report` prints
`(ts * multiplier) >> shift` nanoseconds. On the host, in this directory:

{host_commands}

Files:
{files}
"""


if __name__ == "__main__":
    sys.exit(main())
