"""A Debian 6.12 guest that keeps a boot-mapped ftrace instance across a real triple fault.

Reuses the snapshot engineer's builder (tests/system/build_debian_guest.py: cache root, deb
extraction, cpio writer, QMP helper) for Debian's current 6.12 cloud kernel from
bookworm-backports (no version pinned; only the image package, no -dbg).

The cycle, in one QEMU process (no ``-no-reboot``: QEMU keeps RAM across a reset):

1. first boot: init enables the KML-relevant events in ``instances/boot_map``, runs
   ``bootwork`` (touches PAGES fresh pages, makes CALLS getppid() calls, then writes ``b`` to
   /proc/sysrq-trigger; with ``reboot=t`` the kernel resets by a triple fault) or, for the
   clean case, ``bootwork`` returns and init powers off (``-no-shutdown`` keeps QEMU, the test
   resets it over QMP: RAM kept);
2. second boot: dmesg says ``Ring buffer meta [N] is from previous boot!``; ``bootsave`` (a
   minimal reader: busybox has no Python) copies the instance's raw pages and files, init
   sends them as a base64 tar on the second serial port and powers off.

The host builds a kmltrace bundle (kind "last_boot") from that tar with
``kmltrace.collectors.boot_trace.bundle_from_saved``.

Cache: ``$XDG_CACHE_HOME/kmltrace/boot_trace/<release>/{vmlinuz,initramfs.cpio}``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.system import build_debian_guest as debian

PAGES = 48
CALLS = 100
SMP = 2
#: QEMU 7.2 TCG corrupts RFLAGS on the unlocked %gs cmpxchg16b of 6.12's SLUB fast path
#: (double faults at kmem_cache_alloc_noprof+0xc3): hide CX16 so the kernel does not use it
CPU = "qemu64,-cx16"
#: both placements of the issue: reserve_mem's default (top of RAM), and a fixed memmap
#: nokaslr: KASLR may put the next boot's kernel where reserve_mem's block was, and the block
#: then moves and the buffer is lost (the kernel's own note on reserve_mem; CI saw it once)
RESERVE_MEM = "nokaslr reserve_mem=12M:4096:trace trace_instance=boot_map@trace"
MEMMAP = "memmap=16M$0x10000000 trace_instance=boot_map@0x10000000:12M"
EVENTS = ["exceptions", "raw_syscalls", "irq_vectors", "sched/sched_switch",
          "sched/sched_process_exec", "sched/sched_process_fork", "sched/sched_process_exit",
          "sched/sched_waking"]
CYCLE_TIMEOUT = 150.0
BEGIN, END = "kmlboot-tar-begin", "kmlboot-tar-end"

BOOTWORK_C = r"""
/* bootwork: a known amount of work, then a known last action. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <termios.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    int crash = argc > 1 && strcmp(argv[1], "crash") == 0;
    int console = open("/dev/console", O_WRONLY);
    int sysrq = open("/proc/sysrq-trigger", O_WRONLY);
    char *region = mmap(NULL, PAGES * 4096L, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    dprintf(console, "bootwork pid=%d region=%p pages=%d calls=%d end=%s\n", getpid(),
            (void *)region, PAGES, CALLS, crash ? "crash" : "exit");
    tcdrain(console);                   /* the line must leave the UART before the reset */
    for (long i = 0; i < PAGES; i++)
        region[i * 4096] = 1;           /* PAGES user page faults in region */
    for (int i = 0; i < CALLS; i++)
        syscall(SYS_getppid);           /* CALLS getppid syscalls */
    if (crash)
        write(sysrq, "b", 1);           /* the last action: reset (reboot=t: triple fault) */
    return 0;
}
"""

BOOTSAVE_C = r"""
/* bootsave: copy per_cpu/cpuN/trace_pipe_raw of an instance, non-blocking, into DIR. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    char path[512], buf[4096];
    for (int cpu = 0;; cpu++) {
        snprintf(path, sizeof(path), "%s/per_cpu/cpu%d/trace_pipe_raw", argv[1], cpu);
        int in = open(path, O_RDONLY | O_NONBLOCK);
        if (in < 0)
            return 0;
        snprintf(path, sizeof(path), "%s/cpu%d.raw", argv[2], cpu);
        int out = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        ssize_t n;
        while ((n = read(in, buf, sizeof(buf))) > 0)
            write(out, buf, n);
        close(out);
        close(in);
    }
}
"""

#: the start of an init: a root with busybox's applets, proc, sys, dev and tracefs
PROLOGUE = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin /tmp
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev
mount -t tracefs nodev /sys/kernel/tracing
"""

INIT = PROLOGUE + r"""T=/sys/kernel/tracing/instances/boot_map
if dmesg | grep -q -e 'from previous boot' -e 'buffer invalid commit'; then
  echo "kmlboot: second boot"
  O=/tmp/save
  mkdir -p $O/ftrace/stats
  dmesg > $O/dmesg.txt
  grep -e 'Ring buffer' -e 'reserve_mem' -e 'boot_map' $O/dmesg.txt
  cat /proc/cmdline > $O/cmdline
  uname -r > $O/release
  echo "kmlboot: step last_boot_info"
  cat $T/last_boot_info > $O/ftrace/last_boot_info 2>/dev/null
  echo "kmlboot: step trace"
  cat $T/trace > $O/trace.txt 2>/dev/null
  echo "kmlboot: step events/header_page"
  cat $T/events/header_page > $O/ftrace/header_page
  cat $T/events/header_event > $O/ftrace/header_event
  cat $T/trace_clock > $O/ftrace/trace_clock
  echo "kmlboot: step f"
  for f in $(ls -d $T/events/exceptions/*/format $T/events/raw_syscalls/*/format \
      $T/events/irq_vectors/*/format $T/events/sched/*/format $T/events/ftrace/*/format \
      2>/dev/null); do
    d=$O/ftrace/events/${f#$T/events/}; mkdir -p ${d%/format}; cat $f > $d
  done
  echo "kmlboot: step c"
  for c in $T/per_cpu/cpu*; do cat $c/stats > $O/ftrace/stats/${c##*/}; done
  echo "kmlboot: step $T"
  /bootsave $T $O/ftrace
  echo KMLSAVED > /dev/ttyS1
  echo BEGIN > /dev/ttyS1
  tar c -C $O . | base64 > /dev/ttyS1
  echo END > /dev/ttyS1
  echo "kmlboot: saved"
  poweroff -f
fi
echo "kmlboot: first boot"
for e in EVENTS; do echo 1 > $T/events/$e/enable; done
echo 1 > $T/tracing_on
if grep -q kmlend=crash /proc/cmdline; then /bootwork crash; else /bootwork exit; fi
echo "kmlboot: bootwork returned"
poweroff -f
""".replace("BEGIN", BEGIN).replace("END >", END + " >").replace("EVENTS", " ".join(EVENTS))


def kernel_package() -> str:
    """Debian's current 6.12 cloud image package (bookworm-backports), none pinned."""
    out = debian._run(["apt-cache", "depends", "-t", "bookworm-backports",
                       "linux-image-cloud-amd64"])
    for line in out.splitlines():
        m = re.search(r"Depends:\s*(linux-image-6\.\d+\S*-cloud-amd64)$", line.strip())
        if m:
            return m.group(1)
    raise RuntimeError("apt-cache names no 6.x image from bookworm-backports (is "
                       "'deb http://deb.debian.org/debian bookworm-backports main' in "
                       "/etc/apt/sources.list.d and apt-get update run?)")


def build(log=print) -> debian.Guest:
    root = debian.cache_root().parent / "boot_trace"
    package = kernel_package()
    release = package.removeprefix("linux-image-")
    # the same files as the snapshot guest (vmlinuz, initramfs.cpio), in a cache of its own
    guest = debian.Guest(root / release, release)
    guest.dir.mkdir(parents=True, exist_ok=True)
    if not guest.vmlinuz.exists():
        debs = root / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        hits = sorted(debs.glob(f"{package}_*.deb"))
        if not hits:
            log(f"downloading {package}")
            subprocess.run(["apt-get", "download", "-q", package], cwd=debs, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            hits = sorted(debs.glob(f"{package}_*.deb"))
        with tempfile.TemporaryDirectory(dir=guest.dir) as tmp:
            debian._extract(hits[-1], [f"./boot/vmlinuz-{release}"], Path(tmp))
            os.replace(Path(tmp) / f"boot/vmlinuz-{release}", guest.vmlinuz)
    stamp = guest.dir / "initramfs.key"
    key = hashlib.sha256(f"{PAGES} {CALLS} {INIT}{BOOTWORK_C}{BOOTSAVE_C}".encode()).hexdigest()
    if not guest.initramfs.exists() or not stamp.exists() or stamp.read_text() != key:
        log("building the initramfs")
        files = initramfs_files(INIT, programs())
        tmp = guest.initramfs.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(debian._cpio(files))
        os.replace(tmp, guest.initramfs)
        stamp.write_text(key)
    return guest


def programs() -> dict[str, bytes]:
    """bootwork and bootsave, built static with PAGES and CALLS."""
    with tempfile.TemporaryDirectory() as tmp:
        bins = {}
        for name, source in (("bootwork", BOOTWORK_C), ("bootsave", BOOTSAVE_C)):
            src = Path(tmp) / f"{name}.c"
            src.write_text(source)
            subprocess.run(["gcc", "-static", "-O1", f"-DPAGES={PAGES}", f"-DCALLS={CALLS}",
                            "-o", str(Path(tmp) / name), str(src)], check=True)
            bins[name] = (Path(tmp) / name).read_bytes()
        return bins


def initramfs_files(init: str, bins: dict[str, bytes]) -> dict[str, tuple]:
    """The cpio entries: busybox, `init`, and the programs `bins` at the root."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    return {
        "bin": (b"", 0o40755), "proc": (b"", 0o40755), "sys": (b"", 0o40755),
        "dev": (b"", 0o40755), "dev/console": (b"", 0o20600, (5, 1)),
        "bin/busybox": (Path(busybox).read_bytes(), 0o100755),
        "init": (init.encode(), 0o100755),
        **{name: (data, 0o100755) for name, data in bins.items()},
    }


@dataclass
class Cycle:
    """One run: what the host saw."""

    workdir: Path
    command: list[str]
    console: str = ""
    qemu_log: str = ""
    saved: Path | None = None
    bootwork: dict = field(default_factory=dict)
    seconds: float = 0.0


class _Qmp(debian.RunningGuest):
    """Only for its QMP helper (``qmp``), on our own socket."""

    def __init__(self, path: Path):  # noqa: D107 - no guest object needed
        self.qmp_path = str(path)


def run_cycle(guest: debian.Guest, workdir: Path, crash: bool = True, memory: str = "1G",
              placement: str = RESERVE_MEM, timeout: float = CYCLE_TIMEOUT) -> Cycle:
    """Boot, run bootwork, reset (triple fault) or power off then reset, boot again and save.
    Returns the console, QEMU's cpu_reset log and the extracted save directory."""
    workdir.mkdir(parents=True, exist_ok=True)
    console, out, log = workdir / "console.log", workdir / "ttyS1.log", workdir / "qemu.log"
    qmp_path = workdir / "qmp.sock"
    append = (f"console=ttyS0 {placement} reboot=t panic=-1 quiet "
              f"kmlend={'crash' if crash else 'exit'}")
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", CPU, "-m", memory, "-smp", str(SMP),
            "-kernel", str(guest.vmlinuz), "-initrd", str(guest.initramfs),
            "-append", append, "-display", "none", "-no-shutdown",
            "-serial", f"file:{console}", "-serial", f"file:{out}",
            "-d", "cpu_reset", "-D", str(log),
            "-qmp", f"unix:{qmp_path},server=on,wait=off"]
    cycle = Cycle(workdir, argv)
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    reset_sent = False
    try:
        deadline = started + timeout
        while time.monotonic() < deadline:
            time.sleep(0.3)
            if proc.poll() is not None:
                raise RuntimeError(f"QEMU exited ({proc.returncode}): "
                                   f"{proc.stderr.read().decode(errors='replace')[-500:]}")
            text = console.read_text(errors="replace") if console.exists() else ""
            if "kmlboot: saved" in text:
                break
            if not crash and not reset_sent and "kmlboot: bootwork returned" in text:
                # poweroff -f with -no-shutdown: the VM stops; reset it, RAM kept
                qmp = _Qmp(qmp_path)
                for _ in range(50):
                    if qmp.qmp("query-status")["status"] == "shutdown":
                        break
                    time.sleep(0.2)
                qmp.qmp("system_reset")
                qmp.qmp("cont")
                reset_sent = True
        else:
            raise RuntimeError(f"the guest did not save its previous boot within {timeout:.0f} "
                               f"s (console: {console})")
        # the tar is on ttyS1 before "saved" is printed on ttyS0; give QEMU time to flush
        for _ in range(50):
            if END in (out.read_text(errors="replace") if out.exists() else ""):
                break
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    cycle.seconds = time.monotonic() - started
    cycle.console = console.read_text(errors="replace")
    cycle.qemu_log = log.read_text(errors="replace") if log.exists() else ""
    m = re.search(r"bootwork pid=(\d+) region=(0x[0-9a-f]+) pages=(\d+) calls=(\d+) end=(\w+)",
                  cycle.console)
    if m:
        cycle.bootwork = {"pid": int(m[1]), "region": int(m[2], 16), "pages": int(m[3]),
                          "calls": int(m[4]), "end": m[5]}
    text = out.read_text(errors="replace")
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < 0:
        raise RuntimeError(f"no saved tar on the second serial port ({out})")
    data = base64.b64decode("".join(text[start + len(BEGIN):end].split()))
    cycle.saved = workdir / "saved"
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        try:
            tar.extractall(cycle.saved, filter="data")
        except TypeError:  # a Python without extraction filters (our own guest's tar)
            tar.extractall(cycle.saved)
    return cycle


if __name__ == "__main__":
    import sys
    g = build(log=lambda m: print(m, file=sys.stderr))
    c = run_cycle(g, Path(sys.argv[1]), crash=sys.argv[2:3] != ["exit"],
                  memory=(sys.argv[3:4] or ["1G"])[0])
    print(f"{c.seconds:.1f}s bootwork={c.bootwork} saved={c.saved}")
