"""One boot of Debian's 6.12 kernel under QEMU TCG that runs a given init and hands back what
it saved: the helper of the guest sample scripts (make_function_sample.py,
make_tracecmd_samples.py).

The kernel, busybox and the workload programs are those of tests/system/boot_trace_guest.py
(bootwork: PAGES fresh pages touched, CALLS getppid() calls; bootsave: an instance's raw
pages). The init writes what it saves to a directory, then ``save_and_power_off`` sends it as
a base64 tar on the second serial port.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.system import boot_trace_guest as boot
from tests.system import build_debian_guest as debian

BEGIN, END = "kmlguest-tar-begin", "kmlguest-tar-end"
#: the start of every init: a root with busybox's applets, proc, sys, dev and tracefs
PROLOGUE = boot.PROLOGUE


def save_and_power_off(directory: str) -> str:
    """The end of an init: `directory` as a base64 tar on ttyS1, then power off."""
    return (f"echo {BEGIN} > /dev/ttyS1\ntar c -C {directory} . | base64 > /dev/ttyS1\n"
            f"echo {END} > /dev/ttyS1\npoweroff -f\n")


@dataclass
class Boot:
    argv: list[str]       # the QEMU command, with WORK and CACHE for the temporary paths
    console: str
    seconds: float
    release: str
    bootwork: dict        # pid, region, pages, calls from bootwork's console line


def with_libraries(binary: str) -> dict[str, tuple]:
    """The cpio entries of a host binary and the shared libraries ``ldd`` names for it, at
    their own paths (the guest runs the host's build as it is)."""
    path = shutil.which(binary)
    if not path:
        raise RuntimeError(f"{binary} is not installed on this host")
    entries: dict[str, tuple] = {}
    files = [path] + re.findall(r"(/\S+) \(0x", subprocess.run(
        ["ldd", path], capture_output=True, text=True, check=True).stdout)
    for file in files:
        parts = Path(file).parts[1:]
        for i in range(1, len(parts)):
            entries.setdefault("/".join(parts[:i]), (b"", 0o40755))
        entries["/".join(parts)] = (Path(os.path.realpath(file)).read_bytes(), 0o100755)
    return entries


def run(init: str, extra: dict[str, tuple] | None = None,
        timeout: float = 300.0) -> tuple[Boot, Path]:
    """Boot once with `init`; returns the boot and a temporary directory holding the saved
    tar's files (the caller removes it)."""
    guest = boot.build(log=lambda m: print(m, file=sys.stderr))
    files = {**boot.initramfs_files(init, boot.programs()), **(extra or {})}
    work = Path(tempfile.mkdtemp(prefix="kmlguest-"))
    (work / "initramfs.cpio").write_bytes(debian._cpio(files))
    console, serial = work / "console.log", work / "ttyS1.log"
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", boot.CPU, "-m", "1G",
            "-smp", str(boot.SMP), "-kernel", str(guest.vmlinuz),
            "-initrd", str(work / "initramfs.cpio"), "-append", "console=ttyS0 panic=-1 quiet",
            "-display", "none", "-no-reboot",
            "-serial", f"file:{console}", "-serial", f"file:{serial}"]
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"the guest did not power off within {timeout:.0f} s "
                           f"(console: {console})") from None
    seconds = time.monotonic() - started
    text = serial.read_text(errors="replace")
    start, end = text.find(BEGIN), text.find(END)
    said = console.read_text(errors="replace")
    if start < 0 or end < 0:
        raise RuntimeError(f"no saved tar on the second serial port ({serial}); console:\n"
                           + said[-800:])
    saved = work / "saved"
    data = base64.b64decode("".join(text[start + len(BEGIN):end].split()))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(saved, filter="data")
    m = re.search(r"bootwork pid=(\d+) region=(0x[0-9a-f]+) pages=(\d+) calls=(\d+)", said)
    if not m:
        raise RuntimeError("bootwork's console line is missing:\n" + said[-800:])
    shown = " ".join(argv).replace(str(work), "WORK").replace(str(guest.dir), "CACHE")
    return Boot(shown.split(" "), said, seconds, guest.release,
                {"pid": int(m[1]), "region": m[2], "pages": int(m[3]),
                 "calls": int(m[4])}), saved


def file_list(out: Path) -> str:
    """PROVENANCE.md's list of the files under `out` with the start of their sha256."""
    return "\n".join(f"- `{p.relative_to(out).as_posix()}` (sha256 "
                     f"{hashlib.sha256(p.read_bytes()).hexdigest()[:16]}...)"
                     for p in sorted(out.rglob("*")) if p.is_file() and p.name != "PROVENANCE.md")


def qemu_version() -> str:
    return subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, check=True,
                          text=True).stdout.splitlines()[0]
