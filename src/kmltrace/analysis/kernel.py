"""What the capture says about the traced kernel: KML or mainline, how many CPUs, which IDT."""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from kmltrace.analysis.stacks import ist_layout

#: Everything below this is a user-space (lower-half) address on x86_64 with 4-level paging.
USER_TOP = 0x0000_8000_0000_0000
#: Console lines by which a KML kernel announces itself at boot.
KML_BOOT_PATTERN = r"(?i)kernel mode linux|\bKML\b"


@dataclass
class KernelInfo:
    kml: bool | None = None                  # None: nothing says either way
    kml_evidence: list[str] = field(default_factory=list)
    cpus: int | None = None
    release: str | None = None
    ist: dict[int, int] = field(default_factory=dict)   # vector -> IST index (0 = none)
    ist_source: str = "unknown"

    def to_json(self) -> dict:
        return {"release": self.release, "kml": self.kml, "kml_evidence": self.kml_evidence,
                "cpus": self.cpus, "ist_source": self.ist_source,
                "pf_ist": self.ist.get(14)}


def kernel_info(capture, events: pl.LazyFrame | None = None) -> KernelInfo:
    """Combine bundle manifests, snapshots, input metadata and console lines."""
    info = KernelInfo()
    for manifest in capture.bundles:
        kernel = manifest.get("kernel") or {}
        if isinstance(kernel, dict):
            info.release = info.release or kernel.get("release")
            if kernel.get("kml") is not None:
                info.kml = bool(kernel["kml"]) or bool(info.kml)
                info.kml_evidence += [f"bundle manifest: {e}" for e in kernel.get("kml_evidence", [])]
                if kernel.get("kml"):
                    info.kml_evidence.append(f"{manifest.get('path')}: manifest kernel.kml")
            if isinstance(kernel.get("cpus"), int):
                info.cpus = max(info.cpus or 0, kernel["cpus"])
        captured = manifest.get("captured") or {}
        if isinstance(captured, dict) and isinstance(captured.get("cpus"), int):
            info.cpus = max(info.cpus or 0, captured["cpus"])
    for parsed in capture.inputs:
        if isinstance(parsed.meta.get("cpus"), int) and not _host_trace(parsed):
            info.cpus = max(info.cpus or 0, parsed.meta["cpus"])
        if isinstance(parsed.meta.get("cpu_state"), list) and parsed.meta["cpu_state"]:
            # a guest memory dump has one CPU state per guest CPU
            info.cpus = max(info.cpus or 0, len(parsed.meta["cpu_state"]))
        if isinstance(parsed.meta.get("kernel"), str):
            info.release = info.release or parsed.meta["kernel"]
    for snap in capture.metas("snapshot"):
        kernel = snap.get("kernel") or {} if isinstance(snap, dict) else {}
        if kernel.get("kml") is not None:
            info.kml = bool(kernel["kml"]) or bool(info.kml)
            if kernel["kml"]:
                info.kml_evidence.append("snapshot: kernel.kml")
        if isinstance(kernel.get("cpus"), int):
            info.cpus = max(info.cpus or 0, kernel["cpus"])
        gates = snap.get("idt") if isinstance(snap, dict) else None
        if gates:
            info.ist = {int(g["vector"]): int(g.get("ist") or 0) for g in gates if "vector" in g}
            info.ist_source = "snapshot IDT"
    if events is not None and "raw" in events.collect_schema().names():
        console = (events.filter((pl.col("source") == "console")
                                 & pl.col("raw").str.contains(KML_BOOT_PATTERN))
                   .select("file", "line", "raw").head(1).collect())
        if console.height:
            file, line, raw = console.row(0)
            info.kml = True
            info.kml_evidence.append(f"{file}:{line}: {raw}")
    if events is not None:
        if info.cpus is None:
            # the host's kvm events number the host's CPUs, not the guest's
            guest = (pl.col("source") != "kvm") & ~pl.col("system").fill_null("").str.starts_with("kvm")
            top = events.filter(guest).select(pl.col("cpu").max()).collect().item()
            info.cpus = None if top is None else int(top) + 1
    if not info.ist and info.kml is None:
        # a kernel nobody identified (a bare QEMU log of some kernel) has no known IDT:
        # landings stay unknown rather than guessed
        info.ist_source = "unknown (no snapshot IDT, kernel not identified)"
    elif not info.ist:
        info.ist = ist_layout(bool(info.kml))
        info.ist_source = ("KML 4.0 layout (every ordinary gate on IST 5)" if info.kml
                           else "mainline x86_64 layout (IST only for #DF, NMI, #DB, #MC)")
    return info


def _host_trace(parsed) -> bool:
    """A host's kvm:* trace: its CPU count is the host's, not the traced kernel's."""
    events = parsed.events
    if not events.height or "system" not in events.columns:
        return False
    systems = events.get_column("system").drop_nulls().unique().to_list()
    return bool(systems) and all(str(s).startswith("kvm") for s in systems)
