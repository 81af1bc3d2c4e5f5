#!/usr/bin/env python3
"""Regenerate the lab sample bundles: sample_traces/lab-<scenario>-<accel>/ with PROVENANCE.md.

Usage (as root for the host kvm tracepoints):  python3 sample_traces/make_lab_samples.py [kvm]
Runs every scenario under TCG, and under KVM too when "kvm" is given and /dev/kvm works.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
from pathlib import Path

from kmltrace.lab import build, runner, scenarios

HERE = Path(__file__).resolve().parent


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def provenance(name: str, accel: str, out: Path, result: dict) -> str:
    manifest = json.loads((out / "bundle.json").read_text())
    sizes = "\n".join(f"- `{f['path']}`: {f.get('bytes', (out / f['path']).stat().st_size)} bytes"
                      for f in manifest["files"])
    scenario = scenarios.get(name)
    said = [line for error in result.get("qemu_stderr", []) for i, line in
            enumerate(error.splitlines()) if i == 0 or "failure" in line or "RIP=" in line]
    notes = f"- QEMU said (stderr): `{' / '.join(said)}`\n" if said else ""
    return f"""# lab-{name}-{accel}: real QEMU run of the `{name}` lab kernel

- What: {scenario.description}.
- Kernel: the kmltrace lab kernel (src/kmltrace/lab/kernel/, sources sha256
  `{build.source_hash()}`), built with `-DSCENARIO={scenario.define}`; `kernel.elf` is that build.
- Machine: {platform.uname().system} {platform.uname().release} ({platform.machine()}),
  CPU "{cpu_model()}"; {result['qemu']}; accelerator {accel}.
- Command: `kmltrace lab run {name} --accel {accel} -o sample_traces/lab-{name}-{accel}`
  (regenerate all with `python3 sample_traces/make_lab_samples.py [kvm]`).
- QEMU command line: `{' '.join(manifest['captured']['command'])}`
- Ended by: `{result['end']}` (reset = the guest triple-faulted and QEMU paused it; done = the
  kernel printed its end marker; log_cap = the QEMU log reached the scenario's cap).
{notes}- Guest RAM 16 MiB; `vmcore.elf.zst` is QEMU's `dump-guest-memory` ELF core compressed with zstd
  (16.1 MB uncompressed).
- Files:
{sizes}
"""


def main() -> None:
    accels = ["tcg"] + (["kvm"] if "kvm" in sys.argv[1:] and runner.kvm_usable() else [])
    for accel in accels:
        for name in scenarios.SCENARIOS:
            out = HERE / f"lab-{name}-{accel}"
            shutil.rmtree(out, ignore_errors=True)
            result = runner.run(name, accel=accel, out=out)
            (out / "PROVENANCE.md").write_text(provenance(name, accel, out, result))
            print(name, accel, result["end"])


if __name__ == "__main__":
    main()
