"""What analysis and symbolisation need besides the events: kernel, KML evidence, symbols,
trace clock, and the ring buffer's own lost/overrun counts."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

KML_BOOT_MESSAGE = "SMEP is not enabled because it is not compatible with Kernel Mode Linux"
#: KML's own entry-path symbols start with kml_ (e.g. kml_call_with_user_context)
KML_SYMBOL = re.compile(rb"^[0-9a-f]+ [tTwW] (kml_\w+)", re.M)


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace").strip()
    except OSError:
        return None


def kernel_info(kallsyms: Path | None = None, dmesg: str | None = None) -> dict:
    """``{"release", "uname", "cmdline", "kml", "kml_evidence"}`` for this machine.

    `kallsyms` is a saved copy to search for kml_ symbols (the live file otherwise);
    `dmesg` is the kernel log text (read with ``dmesg`` when None, best effort).
    """
    uname = os.uname()
    evidence = []
    if uname.release.endswith("-kml") or "-kml" in uname.release:
        evidence.append(f"release {uname.release} has the -kml suffix")
    if dmesg is None:
        dmesg = _dmesg()
    if dmesg and KML_BOOT_MESSAGE in dmesg:
        evidence.append(f"boot message: {KML_BOOT_MESSAGE}")
    symbols = kml_symbols(kallsyms or Path("/proc/kallsyms"))
    if symbols:
        evidence.append("kallsyms has KML entry symbols: " + ", ".join(symbols[:5]))
    return {
        "release": uname.release,
        "uname": " ".join([uname.sysname, uname.nodename, uname.release, uname.version,
                           uname.machine]),
        "cmdline": _read("/proc/cmdline"),
        "kml": bool(evidence),
        "kml_evidence": evidence,
        "dmesg_read": dmesg is not None,
    }


def _dmesg() -> str | None:
    if not shutil.which("dmesg"):
        return None
    try:
        result = subprocess.run(["dmesg"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.decode(errors="replace") if result.returncode == 0 else None


def kml_symbols(kallsyms: Path) -> list[str]:
    try:
        data = kallsyms.read_bytes()
    except OSError:
        return []
    return sorted({m.group(1).decode() for m in KML_SYMBOL.finditer(data)})


def snapshot_kallsyms(dest: Path) -> dict:
    """Copy /proc/kallsyms to `dest`; say whether addresses were hidden (kptr_restrict)."""
    try:
        data = Path("/proc/kallsyms").read_bytes()
    except OSError as e:
        return {"saved": False, "error": e.strerror}
    dest.write_bytes(data)
    first = data.split(b"\n", 50)[:50]
    hidden = all(line.startswith(b"0000000000000000 ") for line in first if line)
    return {"saved": True, "symbols": data.count(b"\n"), "addresses_hidden": hidden}


def parse_stats(text: str) -> dict:
    """``per_cpu/cpuN/stats`` as numbers: entries, overrun, commit_overrun, bytes,
    dropped_events, read_events (timestamps are kept as strings)."""
    out: dict = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().replace(" ", "_")
        value = value.strip()
        if not key:
            continue
        try:
            out[key] = int(value)
        except ValueError:
            out[key] = value
    return out


def lost_from_stats(stats: dict) -> int:
    """Events the ring buffer lost: overwritten (overrun), dropped when full, or lost while
    committing (commit overrun)."""
    return sum(int(stats.get(k, 0) or 0) for k in ("overrun", "commit_overrun", "dropped_events"))


def current_clock(text: str) -> str:
    """The bracketed name in a trace_clock file (``[local] global ...`` -> ``local``)."""
    match = re.search(r"\[(\w[\w-]*)\]", text)
    return match.group(1) if match else text.strip()
