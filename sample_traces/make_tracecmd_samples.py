#!/usr/bin/env python3
"""Regenerate sample_traces/guest-6.12-tracecmd: real trace.dat files that this host cannot
record (``trace-cmd record`` fails here with EPERM), made in the 6.12 TCG guest of
guest_capture.py with the host's own trace-cmd build (and the shared libraries ldd names).

    python3 sample_traces/make_tracecmd_samples.py [OUT_DIR]

In one boot, each while ``bootwork exit`` runs (PAGES fresh pages, CALLS getppid() calls):

- ``tsc2nsec.dat``: ``record -C x86-tsc --tsc2nsec`` of page faults and raw_syscalls. Its
  ring-buffer timestamps are TSC counts; its TSC2NSEC option says how trace-cmd turns them
  into nanoseconds;
- ``function.dat``: ``record -p function`` filtered (``-l``) to handle_mm_fault, x64_sys_call
  and __do_sys_getppid, with page faults and raw_syscalls.

On the host, each file is printed by the host's ``trace-cmd report`` (the tests' reference),
``function.dat`` also with ``-O parent`` and with ``-R`` (three ways of printing a function
event).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import guest_capture as guest

HERE = Path(__file__).resolve().parent
OUT = HERE / "guest-6.12-tracecmd"
EVENTS = "-e exceptions:page_fault_user -e raw_syscalls"
RECORDS = {
    "tsc2nsec": f"trace-cmd record -C x86-tsc --tsc2nsec {EVENTS} -o /tmp/save/tsc2nsec.dat "
                "/bootwork exit",
    "function": "trace-cmd record -p function -l handle_mm_fault -l x64_sys_call "
                f"-l __do_sys_getppid {EVENTS} -o /tmp/save/function.dat /bootwork exit",
}
REPORTS = {
    "tsc2nsec-report.txt": ["trace-cmd", "report", "-i", "tsc2nsec.dat"],
    "function-report.txt": ["trace-cmd", "report", "-i", "function.dat"],
    "function-report-parent.txt": ["trace-cmd", "report", "-O", "parent", "-i", "function.dat"],
    "function-report-R.txt": ["trace-cmd", "report", "-R", "-i", "function.dat"],
}

INIT = guest.PROLOGUE + "mkdir -p /tmp/save\ncd /tmp\n" + "".join(
    f'echo "kmltc: recording {name}"\n{command} > /tmp/save/{name}-record.log 2>&1\n'
    f'echo "kmltc: {name} exit $?"\n' for name, command in RECORDS.items()
) + guest.save_and_power_off("/tmp/save")


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    run, saved = guest.run(INIT, guest.with_libraries("trace-cmd"))
    try:
        for name in RECORDS:
            if f"kmltc: {name} exit 0" not in run.console:
                raise RuntimeError(f"trace-cmd record ({name}) failed in the guest:\n" + (
                    saved / f"{name}-record.log").read_text(errors="replace")[-800:])
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        for name in RECORDS:
            shutil.copyfile(saved / f"{name}.dat", out / f"{name}.dat")
            shutil.copyfile(saved / f"{name}-record.log", out / f"{name}-record.log")
    finally:
        shutil.rmtree(saved.parent, ignore_errors=True)
    for name, argv in REPORTS.items():
        result = subprocess.run(argv, cwd=out, capture_output=True, text=True, check=True)
        (out / name).write_text(result.stdout)
    (out / "guest-console.log").write_text(run.console)
    # one bootwork line per record, in RECORDS order
    works = [{"pid": int(m[1]), "region": m[2], "pages": int(m[3]), "calls": int(m[4])}
             for m in re.finditer(r"bootwork pid=(\d+) region=(0x[0-9a-f]+) pages=(\d+) "
                                  r"calls=(\d+)", run.console)]
    expected = {name: {**work, "getppid_nr": 110} for name, work in zip(RECORDS, works)}
    expected["source"] = "bootwork's console lines (guest-console.log), one per record"
    (out / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")
    options = subprocess.run(["trace-cmd", "dump", "--options", "-i", "tsc2nsec.dat"], cwd=out,
                             check=False,
                             capture_output=True, text=True).stdout
    tsc = options[options.find("[Option TSC2NSEC"):].splitlines()[:2]
    (out / "PROVENANCE.md").write_text(PROVENANCE.format(
        release=run.release, qemu=guest.qemu_version(), argv=" ".join(run.argv),
        date=datetime.date.today().isoformat(), seconds=run.seconds,
        records="\n".join(f"    {c}" for c in RECORDS.values()), host=os.uname().release,
        tsc="\n".join(f"    {line}" for line in tsc), tracecmd=_version(),
        works="\n".join(f"- `{name}.dat`: pid {w['pid']}, region {w['region']}"
                        for name, w in zip(RECORDS, works)),
        reports="\n".join(f"    {' '.join(argv)} > {name}" for name, argv in REPORTS.items()),
        files=guest.file_list(out),
        pages=works[0]["pages"], calls=works[0]["calls"]))
    print(f"wrote {out} ({run.seconds:.0f} s in the guest)")
    return 0


def _version() -> str:
    out = subprocess.run(["trace-cmd", "-h"], capture_output=True, text=True, check=False)
    return next((line.strip() for line in (out.stdout + out.stderr).splitlines()
                 if "version" in line), "unknown")


PROVENANCE = """# guest-6.12-tracecmd: trace.dat files recorded by trace-cmd in a 6.12 guest

Real data. Kernel: Debian `{release}` (bookworm-backports cloud image), under {qemu} TCG
(`-cpu qemu64,-cx16 -m 1G -smp 2`); busybox-static initramfs with the host's {tracecmd} and
the shared libraries `ldd` names for it; host kernel {host}; {date}. `trace-cmd record` fails
on the host itself (EPERM), hence a guest.

Made by `python3 sample_traces/make_tracecmd_samples.py` (one boot, {seconds:.0f} s):

    {argv}

In the guest (init, after mounting proc, sys, dev and tracefs), one after the other:

{records}

Each runs `bootwork exit` (tests/system/boot_trace_guest.py): {pages} fresh pages touched in
its mmap region, then {calls} `getppid()` calls (syscall 110), as its console line in
`guest-console.log` says; `expected.json` holds those numbers per file:

{works}

`tsc2nsec.dat`'s TSC2NSEC option (`trace-cmd dump --options`): its ring-buffer timestamps are
TSC counts, and `trace-cmd report` prints `(ts * multiplier) >> shift` nanoseconds.

{tsc}

On the host, in this directory:

{reports}

Files:
{files}
"""


if __name__ == "__main__":
    sys.exit(main())
