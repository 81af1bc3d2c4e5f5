#!/usr/bin/env python3
"""Regenerate sample_traces/guest-6.12-function: real function-tracer lines from a real kernel.

This machine refuses the function tracer in a tracefs instance (EPERM), so the capture runs
inside a guest: Debian's 6.12 cloud kernel under QEMU TCG (the kernel, busybox initramfs and
cpio writer of tests/system/boot_trace_guest.py), where init is root on a stock kernel.

    python3 sample_traces/make_function_sample.py [OUT_DIR]

In the guest, init makes the instance ``instances/kmlfunc``, filters the function tracer to
handle_mm_fault, x64_sys_call and __do_sys_getppid (set_ftrace_filter), enables
exceptions:page_fault_user and raw_syscalls, runs ``bootwork exit`` (PAGES fresh pages
touched, CALLS getppid() calls: tests/system/boot_trace_guest.py), reads the instance's
``trace`` twice (default options, then ``options/sym-offset``), copies the raw pages and format
files, and sends all of it as a base64 tar on the second serial port. The host writes the
files, ``expected.json`` (the workload's own console line) and PROVENANCE.md.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import sys
from pathlib import Path

import guest_capture as guest

HERE = Path(__file__).resolve().parent
OUT = HERE / "guest-6.12-function"
INSTANCE = "kmlfunc"
#: the functions traced: the user #PF path, the syscall dispatch and getppid() itself (a name
#: the kernel cannot trace is reported by init and skipped; on 6.12 exc_page_fault is noinstr,
#: do_user_addr_fault and __x64_sys_getppid are not in available_filter_functions)
FUNCTIONS = ["handle_mm_fault", "x64_sys_call", "__do_sys_getppid"]

INIT = guest.PROLOGUE + r"""T=/sys/kernel/tracing/instances/INSTANCE
O=/tmp/save
mkdir -p $T $O/ftrace/events/ftrace/function $O/ftrace/events/exceptions/page_fault_user \
  $O/ftrace/events/raw_syscalls/sys_enter $O/ftrace/events/raw_syscalls/sys_exit
for f in FUNCTIONS; do
  echo $f >> $T/set_ftrace_filter || echo "kmlfunc: no function $f"
done
echo "kmlfunc: filter $(cat $T/set_ftrace_filter | tr '\n' ' ')"
echo 1 > $T/events/exceptions/page_fault_user/enable
echo 1 > $T/events/raw_syscalls/enable
echo function > $T/current_tracer
echo "kmlfunc: tracer $(cat $T/current_tracer)"
echo 1 > $T/tracing_on
/bootwork exit
echo 0 > $T/tracing_on
cat $T/trace > $O/trace.txt
echo 1 > $T/options/sym-offset
cat $T/trace > $O/trace-sym-offset.txt
echo 0 > $T/options/sym-offset
cat /sys/kernel/tracing/events/header_page > $O/ftrace/header_page
cat /sys/kernel/tracing/events/header_event > $O/ftrace/header_event
for e in ftrace/function exceptions/page_fault_user raw_syscalls/sys_enter raw_syscalls/sys_exit; do
  cat /sys/kernel/tracing/events/$e/format > $O/ftrace/events/$e/format
done
cat $T/trace_clock > $O/ftrace/trace_clock
/bootsave $T $O/ftrace
""".replace("INSTANCE", INSTANCE).replace("FUNCTIONS", " ".join(FUNCTIONS)) \
    + guest.save_and_power_off("/tmp/save")


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    run, saved = guest.run(INIT)
    try:
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        for name in ("trace.txt", "trace-sym-offset.txt"):
            shutil.copyfile(saved / name, out / name)
        shutil.copytree(saved / "ftrace", out / "ftrace")
        (out / "guest-console.log").write_text(run.console)
        filters = re.search(r"kmlfunc: filter (.*)", run.console)
        expected = {**run.bootwork, "getppid_nr": 110,
                    "functions": filters[1].split() if filters else [],
                    "source": "bootwork's console line (guest-console.log); the function "
                              "filter as init read it back"}
        (out / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")
        (out / "PROVENANCE.md").write_text(PROVENANCE.format(
            release=run.release, qemu=guest.qemu_version(), argv=" ".join(run.argv),
            date=datetime.date.today().isoformat(), seconds=run.seconds, init=INIT,
            host=os.uname().release, files=guest.file_list(out), **run.bootwork))
    finally:
        shutil.rmtree(saved.parent, ignore_errors=True)
    print(f"wrote {out} ({run.seconds:.0f} s in the guest)")
    return 0


PROVENANCE = """# guest-6.12-function: function-tracer lines from a real 6.12 kernel

Real data. Kernel: Debian `{release}` (bookworm-backports cloud image), under {qemu} TCG
(`-cpu qemu64,-cx16 -m 1G -smp 2`); busybox-static initramfs; host kernel {host}; {date}.
The function tracer is refused in a tracefs instance on the host itself (EPERM), hence a guest.

Made by `python3 sample_traces/make_function_sample.py` (one boot, {seconds:.0f} s):

    {argv}

The guest's init (verbatim):

```sh
{init}```

The workload: `bootwork exit` (tests/system/boot_trace_guest.py), pid {pid}: {pages} fresh
pages touched in its mmap region {region}, then {calls} `getppid()` calls (syscall 110), as its
console line in `guest-console.log` says. `expected.json` holds those numbers. The kernel,
busybox and QEMU command are `sample_traces/guest_capture.py`'s.

- `trace.txt`: the instance's `trace` with default options (`func <-parent` lines);
- `trace-sym-offset.txt`: the same buffer read again with `options/sym-offset`
  (`do_user_addr_fault+0x0/0x... <-exc_page_fault+0x.../0x...`);
- `ftrace/`: the raw pages (`cpuN.raw`, read by `bootsave` after the two reads above),
  `header_page`, `header_event`, `trace_clock` and the format files of the traced events.

Files:
{files}
"""


if __name__ == "__main__":
    sys.exit(main())
