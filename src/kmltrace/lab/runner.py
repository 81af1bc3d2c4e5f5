"""Run a lab scenario under QEMU (TCG or KVM) and write a bundle of its evidence."""

from __future__ import annotations

import os
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

from kmltrace import bundle as bundles
from kmltrace.collectors import vm
from kmltrace.errors import RefusedError
from kmltrace.lab import build, scenarios

QBOOT = Path("/usr/share/qemu/qboot.rom")  # boots in a fraction of a second, also under KVM
END_MARKER = b"KMLTRACE-LAB: END"
MEMORY = "16M"   # small guest: the memory dump stays small
KERNEL_COPY = "kernel.elf"
#: host kvm events kept per CPU: the last few thousand, enough for the end of a run
KVM_BUFFER_KB = 128


def kvm_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def qemu_command(kernel: Path, accel: str, qemu: str = "qemu-system-x86_64") -> list[str]:
    if accel == "kvm":
        # -cpu host may abort on MSR 0x10a (IA32_ARCH_CAPABILITIES) on some hosts
        cpu = ["-accel", "kvm", "-cpu", "host,-arch-capabilities"]
    else:
        cpu = ["-accel", "tcg", "-cpu", "max"]  # max: FSGSBASE for the gs-write scenario
    bios = ["-bios", str(QBOOT)] if QBOOT.is_file() else []
    return [qemu, *cpu, *bios, "-m", MEMORY, "-nodefaults", "-no-user-config",
            "-kernel", str(kernel)]


def _console_done(bundle: Path) -> bool:
    try:
        return END_MARKER in (bundle / vm.CONSOLE_LOG).read_bytes()[-4096:]
    except OSError:
        return False


def run(name: str, accel: str = "tcg", out: Path | None = None) -> dict:
    """Run scenario `name`; return what ``kmltrace lab run --json`` prints."""
    scenario = scenarios.get(name)
    if accel not in ("tcg", "kvm"):
        raise RefusedError(f"unknown accelerator {accel!r} (tcg or kvm)")
    if accel == "kvm" and not kvm_usable():
        raise RefusedError("KVM is not usable here (/dev/kvm missing or not accessible)",
                           path="/dev/kvm")
    if shutil.which("qemu-system-x86_64") is None:
        raise RefusedError("the lab needs qemu-system-x86_64 on PATH")
    kernel = build.build_kernel(scenario.define)
    if out is None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        out = Path(f"lab-{name}-{accel}-{stamp}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise RefusedError("output directory exists and is not empty", path=str(out))
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(kernel, out / KERNEL_COPY)  # symbols for the analysis, like a vmlinux
    argv = qemu_command(out / KERNEL_COPY, accel)
    result = vm.run_vm(argv, out, timeout=scenario.timeout, log_cap=scenario.log_cap,
                       done=_console_done, compress=True, kvm_buffer_kb=KVM_BUFFER_KB)
    files = [{"path": KERNEL_COPY, "role": "meta",
              "bytes": (out / KERNEL_COPY).stat().st_size}, *result.files]
    manifest = {
        "kind": "lab",
        "kernel": {"release": f"kmltrace-lab {build.source_hash()[:16]}", "kml": False,
                   "kml_evidence": []},
        "captured": {"command": result.command, "accel": accel, "end": result.end,
                     "qemu": vm.qemu_version(), "qmp_events": [e.get("event") for e in
                                                               result.events],
                     "kvm_trace": result.kvm_trace if accel == "kvm" else None},
        "vmlinux": KERNEL_COPY,   # the ELF whose symbols name the lab kernel's addresses
        "lab": {"scenario": scenario.to_json(), "source_hash": build.source_hash()},
        "files": files,
    }
    bundles.write_manifest(out, manifest)
    for error in result.errors:
        lines = error.splitlines()
        more = f" (+{len(lines) - 3} more lines)" if len(lines) > 3 else ""
        print(f"kmltrace: lab {name}: {' / '.join(lines[:3])}{more}", file=sys.stderr)
    return {"bundle": str(out), "scenario": name, "accel": accel, "end": result.end,
            "qemu_stderr": result.errors,
            "files": [f["path"] for f in files], "qemu": vm.qemu_version(),
            "expected": scenario.to_json()}
