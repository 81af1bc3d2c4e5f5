"""Build (and cache) a real Debian guest for the drgn snapshot tests, boot it, dump its memory.

Debian's current cloud kernel (``apt-cache depends linux-image-cloud-amd64`` names the
versioned package; old versions leave the archive, so none is pinned), its ``-dbg`` package for
a DWARF vmlinux, and a busybox-static initramfs whose init loads ``qemu_fw_cfg`` (without it
QEMU's dump carries no VMCOREINFO and drgn refuses it) and starts ``snapwork``: a static
program of ours that recurses to a known stack depth and sleeps there.  QEMU runs under TCG
with ``-device vmcoreinfo -m 128M -smp 2`` and a QMP socket; ``dump-guest-memory`` writes an
ELF dump (kdump-zlib does not open in drgn, kdump-snappy hung QEMU).

Everything is cached under ``$XDG_CACHE_HOME/kmltrace/guest/<kernel version>/``::

    vmlinuz  vmlinux (slimmed, see slim_vmlinux)  qemu_fw_cfg.ko  snapwork  initramfs.cpio
    vmcore.elf  vmcore-console.log (the boot that was dumped; its snapwork line)

Run it directly to build the cache: ``python3 tests/system/build_debian_guest.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

GUEST_MEMORY = "128M"
GUEST_CPUS = 2
#: snapwork's recursion: DEPTH frames of at least FRAME bytes each, then it sleeps
DEPTH = 64
FRAME = 1024
READY = re.compile(rb"snapwork ready pid=(\d+) deep=(0x[0-9a-f]+) top=(0x[0-9a-f]+)")
BOOT_TIMEOUT = 240.0
SETTLE = 2.0

SNAPWORK_C = r"""
/* snapwork: touch a known stack depth (DEPTH frames of FRAME bytes), report where, sleep. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void deepest(int depth, volatile char *top)
{
    volatile char frame[FRAME];
    memset((char *)frame, depth, sizeof(frame));
    if (depth > 1) {
        deepest(depth - 1, top);
        return;
    }
    FILE *console = fopen("/dev/console", "w");
    if (!console)
        console = stdout;
    fprintf(console, "snapwork ready pid=%d deep=%p top=%p\n", getpid(), (void *)frame,
            (void *)top);
    fflush(console);
    for (;;)
        pause();
}

int main(void)
{
    volatile char top;
    deepest(DEPTH, &top);
    return 0;
}
"""

INIT = """#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox insmod /qemu_fw_cfg.ko
/snapwork &
exec /bin/busybox sleep 100000
"""


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kmltrace" / "guest"


def _run(argv, **kw) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw).stdout


def current_kernel_package() -> str:
    """The versioned image package linux-image-cloud-amd64 depends on today."""
    out = _run(["apt-cache", "depends", "linux-image-cloud-amd64"])
    for line in out.splitlines():
        m = re.search(r"Depends:\s*(linux-image-\S+-cloud-amd64)$", line.strip())
        if m:
            return m.group(1)
    raise RuntimeError("apt-cache depends linux-image-cloud-amd64 names no image package "
                       "(run apt-get update)")


@dataclass
class Guest:
    """The built fixture's files."""

    dir: Path
    release: str

    @property
    def vmlinuz(self) -> Path:
        return self.dir / "vmlinuz"

    @property
    def vmlinux(self) -> Path:
        return self.dir / "vmlinux"

    @property
    def initramfs(self) -> Path:
        return self.dir / "initramfs.cpio"

    @property
    def vmcore(self) -> Path:
        return self.dir / "vmcore.elf"

    @property
    def vmcore_console(self) -> Path:
        return self.dir / "vmcore-console.log"


def _download(package: str, debs: Path) -> tuple[Path, Path]:
    debs.mkdir(parents=True, exist_ok=True)
    wanted = [package, package + "-dbg"]
    found = {}
    for name in wanted:
        hits = sorted(debs.glob(f"{name}_*.deb"))
        if hits:
            found[name] = hits[-1]
    missing = [n for n in wanted if n not in found]
    if missing:
        subprocess.run(["apt-get", "download", "-q", *missing], cwd=debs, check=True,
                       stdout=subprocess.DEVNULL)
        for name in missing:
            found[name] = sorted(debs.glob(f"{name}_*.deb"))[-1]
    return found[package], found[package + "-dbg"]


def _extract(deb: Path, members: list[str], dest: Path) -> None:
    tar = subprocess.Popen(["tar", "-x", "-C", str(dest), *members], stdin=subprocess.PIPE)
    subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=tar.stdin, check=True)
    tar.stdin.close()
    if tar.wait():
        raise RuntimeError(f"tar could not extract {members} from {deb}")


def slim_vmlinux(full: Path, out: Path) -> None:
    """Drop what drgn does not need for types, variables and symbols: relocations, line
    tables, location lists and frame info.  ``.data..percpu`` stays PROGBITS (objcopy
    --only-keep-debug would make it NOBITS and drgn would then misplace per-CPU symbols)."""
    drop = [".rela.*", ".debug_line", ".debug_line_str", ".debug_loclists", ".debug_loc",
            ".debug_frame", ".eh_frame"]
    argv = ["objcopy"]
    for section in drop:
        argv += ["--remove-section", section]
    subprocess.run([*argv, str(full), str(out)], check=True, capture_output=True)


def _cpio(files: dict[str, tuple]) -> bytes:
    """A newc cpio archive of `files`: name -> (content, mode[, (rdev major, minor)])."""
    out = bytearray()
    for ino, (name, entry) in enumerate([*files.items(), ("TRAILER!!!", (b"", 0))], 1):
        data, mode = entry[:2]
        major, minor = entry[2] if len(entry) > 2 else (0, 0)
        raw = name.encode() + b"\0"
        header = ("070701" + "".join(f"{v:08x}" for v in (
            ino, mode, 0, 0, 1, 0, len(data), 0, 0, major, minor, len(raw), 0))).encode()
        out += header + raw
        out += b"\0" * (-len(out) % 4)
        out += data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def build(root: Path | None = None, log=print) -> Guest:
    """Download, extract and assemble everything except the memory dump (cached)."""
    root = root or cache_root()
    package = current_kernel_package()
    release = package.removeprefix("linux-image-")
    guest = Guest(root / release, release)
    guest.dir.mkdir(parents=True, exist_ok=True)
    fw_cfg = guest.dir / "qemu_fw_cfg.ko"
    if not (guest.vmlinuz.exists() and guest.vmlinux.exists() and fw_cfg.exists()):
        log(f"downloading {package} and its -dbg package")
        image, dbg = _download(package, root / "debs")
        with tempfile.TemporaryDirectory(dir=guest.dir) as tmp:
            tmp = Path(tmp)
            module = f"./lib/modules/{release}/kernel/drivers/firmware/qemu_fw_cfg.ko"
            _extract(image, [f"./boot/vmlinuz-{release}", module], tmp)
            os.replace(tmp / module, fw_cfg)
            os.replace(tmp / f"boot/vmlinuz-{release}", guest.vmlinuz)
            if not guest.vmlinux.exists():
                log("extracting vmlinux from the -dbg package")
                _extract(dbg, [f"./usr/lib/debug/boot/vmlinux-{release}"], tmp)
                log("slimming vmlinux")
                slim_vmlinux(tmp / f"usr/lib/debug/boot/vmlinux-{release}", tmp / "vmlinux")
                os.replace(tmp / "vmlinux", guest.vmlinux)
    if not guest.initramfs.exists():
        log("building the initramfs")
        work = guest.dir / "snapwork"
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp) / "snapwork.c"
            source.write_text(SNAPWORK_C)
            subprocess.run(["gcc", "-static", "-O0", f"-DDEPTH={DEPTH}", f"-DFRAME={FRAME}",
                            "-o", str(Path(tmp) / "snapwork"), str(source)], check=True)
            os.replace(Path(tmp) / "snapwork", work)
        busybox = shutil.which("busybox") or "/bin/busybox"
        files = {
            "bin": (b"", 0o40755), "proc": (b"", 0o40755), "sys": (b"", 0o40755),
            "dev": (b"", 0o40755), "dev/console": (b"", 0o20600, (5, 1)),
            "bin/busybox": (Path(busybox).read_bytes(), 0o100755),
            "init": (INIT.encode(), 0o100755),
            "snapwork": (work.read_bytes(), 0o100755),
            "qemu_fw_cfg.ko": ((guest.dir / "qemu_fw_cfg.ko").read_bytes(), 0o100644),
        }
        # unique names, then atomic renames: test runs side by side may build at once
        tmp = guest.initramfs.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(_cpio(files))
        os.replace(tmp, guest.initramfs)
    return guest


class RunningGuest:
    """The guest booted under QEMU TCG with a QMP socket; ``ready`` is snapwork's line."""

    def __init__(self, guest: Guest, workdir: Path):
        self.guest = guest
        self.workdir = workdir
        self.qmp_path = str(workdir / "qmp.sock")
        self.console = workdir / "console.log"
        self.proc = None
        self.ready: dict | None = None

    def start(self, timeout: float = BOOT_TIMEOUT) -> "RunningGuest":
        argv = ["qemu-system-x86_64", "-accel", "tcg", "-m", GUEST_MEMORY,
                "-smp", str(GUEST_CPUS), "-kernel", str(self.guest.vmlinuz),
                "-initrd", str(self.guest.initramfs),
                # init_on_free=1: freed pages are zero, so the dump compresses well
                "-append", "console=ttyS0 init_on_free=1 panic=-1 quiet",
                "-device", "vmcoreinfo", "-display", "none", "-no-reboot",
                "-serial", f"file:{self.console}",
                "-qmp", f"unix:{self.qmp_path},server=on,wait=off"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"QEMU exited ({self.proc.returncode}): "
                                   f"{self.proc.stderr.read().decode(errors='replace')[-500:]}")
            text = self.console.read_bytes() if self.console.exists() else b""
            m = READY.search(text)
            if m:
                self.ready = {"pid": int(m.group(1)), "deep": int(m.group(2), 16),
                              "top": int(m.group(3), 16), "line": m.group(0).decode()}
                # the line is written just before pause(): give snapwork time to get there,
                # or its saved registers are those of the write() (seen under load)
                time.sleep(SETTLE)
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"snapwork did not report within {timeout:.0f} s "
                           f"(console: {self.console})")

    def qmp(self, command: str, **arguments):
        """One QMP command on a fresh connection (drgn may hold its own)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(120)
            sock.connect(self.qmp_path)
            stream = sock.makefile("rwb")

            def reply():
                while True:
                    message = json.loads(stream.readline())
                    if "return" in message or "error" in message:
                        return message

            stream.readline()  # greeting
            for name, args in (("qmp_capabilities", {}), (command, arguments)):
                stream.write(json.dumps({"execute": name, "arguments": args}).encode() + b"\n")
                stream.flush()
                message = reply()
                if "error" in message:
                    raise RuntimeError(f"QMP {name}: {message['error']}")
            return message["return"]

    def dump(self, path: Path) -> Path:
        """``dump-guest-memory`` as an ELF core (paging off: physical memory and notes)."""
        tmp = path.with_name(path.name + ".part")
        self.qmp("dump-guest-memory", paging=False, protocol=f"file:{tmp}")
        os.replace(tmp, path)
        return path

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def running(guest: Guest):
    with tempfile.TemporaryDirectory(prefix="kmltrace-guest-") as tmp:
        vm = RunningGuest(guest, Path(tmp))
        try:
            yield vm.start()
        finally:
            vm.stop()


def ensure_vmcore(guest: Guest, vm: RunningGuest | None = None, refresh: bool = False) -> Path:
    """The cached dump of a booted guest (taken from `vm`, or from a boot of its own);
    `refresh` replaces a cached one, so that the dump and `vm` are the same boot."""
    if guest.vmcore.exists() and guest.vmcore_console.exists() and not refresh:
        return guest.vmcore
    if vm is None:
        with running(guest) as vm:
            return ensure_vmcore(guest, vm)
    fresh = guest.vmcore.with_suffix(f".new{os.getpid()}")
    vm.dump(fresh)
    shutil.copyfile(vm.console, guest.vmcore_console)
    os.replace(fresh, guest.vmcore)
    return guest.vmcore


def main() -> int:
    guest = build(log=lambda m: print(m, file=sys.stderr))
    started = time.monotonic()
    ensure_vmcore(guest)
    print(f"{guest.dir}: vmlinuz, vmlinux, initramfs.cpio, vmcore.elf "
          f"({time.monotonic() - started:.1f} s to boot and dump)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
