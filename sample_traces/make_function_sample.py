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

import base64
import datetime
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from tests.system import boot_trace_guest as boot  # noqa: E402
from tests.system import build_debian_guest as debian  # noqa: E402

OUT = HERE / "guest-6.12-function"
INSTANCE = "kmlfunc"
#: the functions traced: the user #PF path, the syscall dispatch and getppid() itself (a name
#: the kernel cannot trace is reported by init and skipped; on 6.12 exc_page_fault is noinstr,
#: do_user_addr_fault and __x64_sys_getppid are not in available_filter_functions)
FUNCTIONS = ["handle_mm_fault", "x64_sys_call", "__do_sys_getppid"]
BEGIN, END = "kmlfunc-tar-begin", "kmlfunc-tar-end"
TIMEOUT = 240.0

INIT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin /tmp
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev
mount -t tracefs nodev /sys/kernel/tracing
T=/sys/kernel/tracing/instances/INSTANCE
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
uname -r > $O/release
cat /proc/cmdline > $O/cmdline
echo BEGIN > /dev/ttyS1
tar c -C $O . | base64 > /dev/ttyS1
echo END > /dev/ttyS1
echo "kmlfunc: saved"
poweroff -f
""".replace("INSTANCE", INSTANCE).replace("FUNCTIONS", " ".join(FUNCTIONS)) \
   .replace("BEGIN >", BEGIN + " >").replace("END >", END + " >")


def build_initramfs(guest: debian.Guest, dest: Path) -> None:
    """The boot-trace guest's initramfs with this init (bootwork and bootsave as they are)."""
    with tempfile.TemporaryDirectory() as tmp:
        bins = {}
        for name, source in (("bootwork", boot.BOOTWORK_C), ("bootsave", boot.BOOTSAVE_C)):
            src = Path(tmp) / f"{name}.c"
            src.write_text(source)
            subprocess.run(["gcc", "-static", "-O1", f"-DPAGES={boot.PAGES}",
                            f"-DCALLS={boot.CALLS}", "-o", str(Path(tmp) / name), str(src)],
                           check=True)
            bins[name] = (Path(tmp) / name).read_bytes()
    busybox = shutil.which("busybox") or "/bin/busybox"
    files = {
        "bin": (b"", 0o40755), "proc": (b"", 0o40755), "sys": (b"", 0o40755),
        "dev": (b"", 0o40755), "dev/console": (b"", 0o20600, (5, 1)),
        "bin/busybox": (Path(busybox).read_bytes(), 0o100755),
        "init": (INIT.encode(), 0o100755),
        "bootwork": (bins["bootwork"], 0o100755),
        "bootsave": (bins["bootsave"], 0o100755),
    }
    dest.write_bytes(debian._cpio(files))


def run_guest(guest: debian.Guest, initramfs: Path, work: Path) -> tuple[list[str], str, bytes]:
    """Boot once; returns (QEMU argv, console text, the saved tar)."""
    console, out = work / "console.log", work / "ttyS1.log"
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", boot.CPU, "-m", "1G",
            "-smp", str(boot.SMP), "-kernel", str(guest.vmlinuz), "-initrd", str(initramfs),
            "-append", "console=ttyS0 panic=-1 quiet", "-display", "none", "-no-reboot",
            "-serial", f"file:{console}", "-serial", f"file:{out}"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"the guest did not power off within {TIMEOUT:.0f} s "
                           f"(console: {console})") from None
    text = out.read_text(errors="replace")
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < 0:
        raise RuntimeError(f"no saved tar on the second serial port ({out}); console: "
                           f"{console.read_text(errors='replace')[-800:]}")
    data = base64.b64decode("".join(text[start + len(BEGIN):end].split()))
    return argv, console.read_text(errors="replace"), data


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    guest = boot.build(log=lambda m: print(m, file=sys.stderr))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        initramfs = work / "initramfs.cpio"
        build_initramfs(guest, initramfs)
        started = time.monotonic()
        argv, console, data = run_guest(guest, initramfs, work)
        seconds = time.monotonic() - started
        saved = work / "saved"
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(saved, filter="data")
        m = re.search(r"bootwork pid=(\d+) region=(0x[0-9a-f]+) pages=(\d+) calls=(\d+)",
                      console)
        if not m:
            raise RuntimeError("bootwork's console line is missing:\n" + console[-800:])
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        for name in ("trace.txt", "trace-sym-offset.txt"):
            shutil.copyfile(saved / name, out / name)
        shutil.copytree(saved / "ftrace", out / "ftrace")
        (out / "guest-console.log").write_text(console)
        release = (saved / "release").read_text().strip()
        filters = re.search(r"kmlfunc: filter (.*)", console)
        expected = {"pid": int(m[1]), "region": m[2], "pages": int(m[3]), "calls": int(m[4]),
                    "getppid_nr": 110, "functions": filters[1].split() if filters else [],
                    "source": "bootwork's console line (guest-console.log); the function "
                              "filter as init read it back"}
        (out / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")
        sums = {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()[:16]
                for p in sorted(out.rglob("*")) if p.is_file()}
        qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True,
                              text=True).stdout.splitlines()[0]
        (out / "PROVENANCE.md").write_text(PROVENANCE.format(
            release=release, qemu=qemu, argv=" ".join(argv).replace(str(work), "WORK")
                                                         .replace(str(guest.dir), "CACHE"),
            date=datetime.date.today().isoformat(), seconds=seconds, init=INIT,
            pid=m[1], region=m[2], pages=m[3], calls=m[4], host=os.uname().release,
            files="\n".join(f"- `{k}` (sha256 {v}...)" for k, v in sums.items())))
    print(f"wrote {out} ({seconds:.0f} s in the guest)")
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
console line in `guest-console.log` says. `expected.json` holds those numbers.

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
