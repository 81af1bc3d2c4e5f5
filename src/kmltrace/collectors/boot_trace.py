"""The persistent boot-mapped ftrace instance (Linux >= 6.12): arm it, and read what the
previous boot left in it after a reset.

The kernel keeps an instance's ring buffer in memory reserved at boot (``reserve_mem=`` plus
``trace_instance=NAME@LABEL``, or ``memmap=`` plus ``trace_instance=NAME@ADDR:SIZE``). After a
reset that keeps RAM, the next boot validates each CPU's buffer and logs
``Ring buffer meta [N] is from previous boot!`` or ``Ring buffer boot meta [N] <why>`` (the
buffer of that CPU is lost). The instance then holds the previous boot's events until
something new is written to it; 6.12 has no backup instance, so enabling events there first
would mix the boots.

The bundle (kind ``last_boot``) is the collector's layout (docs/INTERFACES.md) plus
``ftrace/last_boot_info`` (6.12: ``text delta:`` / ``data delta:``, current KASLR base minus
the previous one), ``dmesg.txt`` and ``trace.txt`` (the kernel's own text of the preserved
buffer), and a manifest section ``last_boot`` (per-CPU state, deltas, the instance).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

from kmltrace.collectors import metadata
from kmltrace.collectors.bundle_writer import BundleWriter, default_output
from kmltrace.errors import InputError, RefusedError

MIN_RELEASE = (6, 12)
PARAMETERS = "reserve_mem=12M:4096:trace trace_instance=boot_map@trace"
PARAMETERS_FIXED = "memmap=16M$0x10000000 trace_instance=boot_map@0x10000000:12M"
#: the KML-relevant events kept across a reset (tracefs event paths)
EVENTS = ["exceptions", "raw_syscalls", "irq_vectors", "sched/sched_switch",
          "sched/sched_process_exec", "sched/sched_process_fork", "sched/sched_process_exit",
          "sched/sched_waking"]
PREVIOUS = re.compile(r"Ring buffer meta \[(\d+)\] is from previous boot!")
LOST = re.compile(r"Ring buffer boot meta \[(\d+)\] (.+)")
MAPPED = re.compile(r"Tracing: mapped boot instance (\S+) at physical memory "
                    r"(0x[0-9a-f]+) of size (0x[0-9a-f]+)")
SURVIVES = ("what survives a reset: the events of the boot-mapped instance, their timestamps, "
            "pids and fields. What does not: task names (comms show as <...>; the comm cache "
            "is not preserved), symbols of the old boot (kernel addresses are mapped with "
            "last_boot_info's text delta), anything after the buffer of a CPU was overwritten "
            "(reported per CPU on the next boot).")


def release_tuple(release: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m[1]), int(m[2])) if m else (0, 0)


def check_release(release: str) -> None:
    if release_tuple(release) < MIN_RELEASE:
        raise RefusedError(f"kernel {release} has no boot-mapped (persistent) ftrace instance: "
                           f"it needs Linux >= {MIN_RELEASE[0]}.{MIN_RELEASE[1]} "
                           f"(reserve_mem= and trace_instance=NAME@LABEL)")


def boot_instances(root: Path) -> list[Path]:
    """Instances mapped at boot: the ones with a ``last_boot_info`` file."""
    inst = root / "instances"
    if not inst.is_dir():
        return []
    return sorted(p for p in inst.iterdir() if (p / "last_boot_info").exists())


def parse_last_boot_info(text: str | None) -> dict:
    """6.12: ``text delta:\\t<bytes>`` and ``data delta:\\t<bytes>`` (decimal). Later kernels
    print other lines; they are kept as they are."""
    out: dict = {"text": (text or "").strip()}
    for key, value in re.findall(r"^(text|data) delta:\s*(-?\d+)", text or "", re.M):
        out[f"{key}_delta"] = int(value)
    return out


def cpu_states(dmesg: str, cpus: list[int], instance: str | None = None) -> dict:
    """Per CPU what the kernel said of its preserved buffer: ``previous_boot``, ``lost: why``
    or ``no message``; plus the mapping line."""
    states = {cpu: "no message" for cpu in cpus}
    for m in PREVIOUS.finditer(dmesg):
        states[int(m[1])] = "previous_boot"
    for m in LOST.finditer(dmesg):
        states[int(m[1])] = f"lost: {m[2].strip()}"
    mapped = [m for m in MAPPED.finditer(dmesg) if instance is None or m[1] == instance]
    return {"cpus": {str(c): states[c] for c in sorted(states)},
            "mapped": ({"instance": mapped[-1][1], "address": mapped[-1][2],
                        "size": mapped[-1][3], "line": mapped[-1][0]} if mapped else None),
            "lines": [line.strip() for line in dmesg.splitlines()
                      if "Ring buffer" in line and "meta [" in line or MAPPED.search(line)]}


def judge(states: dict, raw_sizes: dict[int, int], where: str) -> list[str]:
    """Refuse what is not a previous boot; return warnings for what is partly one."""
    cpus = states["cpus"]
    if not any(s == "previous_boot" or s.startswith("lost") for s in cpus.values()):
        if states["mapped"] is None and not states["lines"]:
            raise RefusedError("the kernel log has no line about the boot-mapped instance (no "
                               "'Tracing: mapped boot instance' nor 'Ring buffer meta [N] is "
                               "from previous boot!'): cannot tell which boot its events are "
                               "from", path=where)
        raise RefusedError("the boot-mapped instance holds the current boot, not a previous "
                           "one: no 'Ring buffer meta [N] is from previous boot!' in the "
                           "kernel log (the last boot ended with a power cycle, RAM was not "
                           "kept, or KASLR put the kernel where reserve_mem's block was: boot "
                           "with nokaslr, or use a fixed memmap= block)", path=where)
    if not any(raw_sizes.values()):
        raise RefusedError("the boot-mapped instance is empty: no page in any "
                           "per_cpu/cpuN/trace_pipe_raw (were events enabled in it before the "
                           "reset? run 'kmltrace collect --arm-boot-trace')", path=where)
    warnings = []
    for cpu, state in cpus.items():
        if state.startswith("lost"):
            warnings.append(f"CPU {cpu}: its buffer from the previous boot was lost "
                            f"({state.removeprefix('lost: ')}): its last events are unknown")
    return warnings


def _read_raw_pages(path: Path, dest: Path) -> int:
    """Copy a trace_pipe_raw file without blocking when it is empty."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    total = 0
    try:
        with open(dest, "wb") as out:
            while True:
                try:
                    chunk = os.read(fd, 1 << 16)
                except BlockingIOError:
                    break
                except OSError as e:
                    if e.errno in (errno.EAGAIN, errno.EINTR):
                        break
                    raise
                if not chunk:
                    break
                out.write(chunk)
                total += len(chunk)
    finally:
        os.close(fd)
    return total


def save_instance(instance: Path, saved: Path) -> None:
    """Copy what kmltrace needs of a live boot-mapped instance into `saved` (the layout the
    guest's minimal reader also writes): ftrace/{header_page, header_event, trace_clock,
    last_boot_info, events/*/*/format, stats/cpuN, cpuN.raw} and trace.txt. The text is read
    first: reading trace_pipe_raw consumes the pages."""
    ftrace = saved / "ftrace"
    (ftrace / "stats").mkdir(parents=True, exist_ok=True)

    def copy(src: Path, rel: str) -> None:
        try:
            data = src.read_bytes()
        except OSError:
            return
        dest = saved / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)

    copy(instance / "trace", "trace.txt")
    copy(instance / "last_boot_info", "ftrace/last_boot_info")
    for name in ("header_page", "header_event"):
        copy(instance / "events" / name, f"ftrace/{name}")
    copy(instance / "trace_clock", "ftrace/trace_clock")
    for fmt in instance.glob("events/*/*/format"):
        copy(fmt, f"ftrace/{fmt.relative_to(instance)}")
    for cpu_dir in sorted(instance.glob("per_cpu/cpu*")):
        copy(cpu_dir / "stats", f"ftrace/stats/{cpu_dir.name}")
        _read_raw_pages(cpu_dir / "trace_pipe_raw", ftrace / f"{cpu_dir.name}.raw")


def bundle_from_saved(saved: Path, output: Path, kernel: dict | None = None,
                      command: list[str] | None = None, reader: str = "kmltrace",
                      extra_meta: dict[str, Path] | None = None) -> dict:
    """Write a ``last_boot`` bundle from a saved instance directory (``ftrace/``, and
    ``dmesg.txt`` of the boot that read it). Raises RefusedError for a current-boot or empty
    instance. `extra_meta` (bundle name -> file) adds evidence kept beside it, unparsed."""
    saved = Path(saved)
    ftrace = saved / "ftrace"
    if not (ftrace / "header_page").is_file():
        raise InputError("no ftrace/header_page: not a saved boot-mapped instance",
                         path=str(saved))
    dmesg = _text(saved / "dmesg.txt")
    raws = {int(m[1]): f.stat().st_size for f in ftrace.glob("cpu*.raw")
            if (m := re.fullmatch(r"cpu(\d+)\.raw", f.name))}
    stats_cpus = [int(p.name[3:]) for p in (ftrace / "stats").glob("cpu*") if p.name[3:].isdigit()]
    states = cpu_states(dmesg, sorted(set(raws) | set(stats_cpus)))
    warnings = judge(states, raws, str(saved))
    info = parse_last_boot_info(_text(ftrace / "last_boot_info"))
    writer = BundleWriter(output or default_output())
    try:
        shutil.copytree(ftrace, writer.ftrace, dirs_exist_ok=True)
        writer.add_file("ftrace", "data", "ftrace_raw")
        for name in ("dmesg.txt", "trace.txt"):
            if (saved / name).exists():
                shutil.copyfile(saved / name, writer.path / name)
                writer.add_file(name, "meta")
        for name, src in (extra_meta or {}).items():
            shutil.copyfile(src, writer.path / name)
            writer.add_file(name, "meta")
        events = sorted(f"{p.parent.parent.name}:{p.parent.name}"
                        for p in ftrace.glob("events/*/*/format")
                        if p.parent.parent.name != "ftrace")
        manifest = {
            "kind": "last_boot",
            "kernel": kernel or {"release": _text(saved / "release").strip() or None,
                                 "cmdline": _text(saved / "cmdline").strip() or None,
                                 "kml": False, "kml_evidence": []},
            "captured": {"events": events, "command": command or [],
                         "clock": _clock(_text(ftrace / "trace_clock")),
                         "reader": reader},
            "last_boot": {**states, "last_boot_info": info, "warnings": warnings,
                          "raw_bytes": {str(c): n for c, n in sorted(raws.items())}},
        }
        writer.write_manifest(manifest)
        path = writer.finish()
    except BaseException:
        writer.abandon()
        raise
    return {"bundle": str(path), "cpus": states["cpus"], "warnings": warnings,
            "last_boot_info": info, "raw_bytes": sum(raws.values())}


def read_last_boot(output: Path | None, root: Path | None = None, instance: str | None = None,
                   release: str | None = None, dmesg: str | None = None) -> dict:
    """``kmltrace collect --last-boot``: the previous boot's events from the live machine."""
    from kmltrace.collectors import tracefs

    release = release or os.uname().release
    check_release(release)
    root = root or tracefs.require_tracefs()
    found = boot_instances(root)
    if instance:
        found = [p for p in found if p.name == instance]
    if not found:
        raise RefusedError("no boot-mapped ftrace instance on this kernel (no instance with "
                           "last_boot_info under instances/): the kernel command line lacks "
                           f"'{PARAMETERS}'; nothing of a previous boot was kept",
                           path=str(root / "instances"))
    inst = found[0]
    dmesg = dmesg if dmesg is not None else (metadata._dmesg() or "")
    enabled = _enabled_events(inst)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="kmltrace-lastboot-") as tmp:
        saved = Path(tmp)
        (saved / "dmesg.txt").write_text(dmesg)
        save_instance(inst, saved)
        kernel = metadata.kernel_info(dmesg=dmesg)
        result = bundle_from_saved(saved, output, kernel=kernel,
                                   command=["kmltrace", "collect", "--last-boot"])
    if enabled:
        result["warnings"].append(
            f"events were enabled in {inst.name} when it was read ({', '.join(enabled[:5])}"
            f"{'...' if len(enabled) > 5 else ''}): events of this boot may follow the "
            f"previous boot's in the bundle")
    return result


def arm(root: Path | None = None, events: list[str] | None = None,
        release: str | None = None, cmdline: str | None = None) -> dict:
    """``kmltrace collect --arm-boot-trace``: check the kernel and the instance, enable the
    KML-relevant events in it. Returns what it found and did."""
    from kmltrace.collectors import tracefs

    release = release or os.uname().release
    check_release(release)
    root = root or tracefs.require_tracefs()
    cmdline = cmdline if cmdline is not None else (metadata._read("/proc/cmdline") or "")
    found = boot_instances(root)
    if not found:
        raise RefusedError(
            "no boot-mapped ftrace instance on this kernel: add these kernel parameters and "
            f"reboot: '{PARAMETERS}' (or, at a fixed address that firmware leaves alone: "
            f"'{PARAMETERS_FIXED}'); events can be listed after the instance, e.g. "
            "trace_instance=boot_map@trace,exceptions,raw_syscalls,sched,irq_vectors",
            path=str(root / "instances"))
    inst = found[0]
    dmesg = metadata._dmesg() or ""
    states = cpu_states(dmesg, _cpus(inst), inst.name)
    preserved = [c for c, s in states["cpus"].items() if s == "previous_boot"]
    if preserved:
        raise RefusedError(
            f"{inst.name} still holds the previous boot's events (CPUs {', '.join(preserved)}); "
            "6.12 has no backup instance, so enabling events now would mix the boots: run "
            "'kmltrace collect --last-boot -o DIR' first", path=str(inst))
    enabled_now = []
    wanted = events or EVENTS
    for ev in wanted:
        enable = inst / "events" / ev / "enable"
        if not enable.exists():
            continue
        if "1" not in enable.read_text():
            enable.write_text("1")
            enabled_now.append(ev)
    (inst / "tracing_on").write_text("1")
    return {"instance": inst.name, "release": release, "enabled_now": enabled_now,
            "enabled": _enabled_events(inst), "cpus": _cpus(inst),
            "missing": [ev for ev in wanted if not (inst / "events" / ev / "enable").exists()],
            "parameters": PARAMETERS, "survives": SURVIVES}


def _enabled_events(inst: Path) -> list[str]:
    out = []
    for enable in inst.glob("events/*/*/enable"):
        try:
            if enable.read_text().strip() == "1":
                out.append(f"{enable.parent.parent.name}:{enable.parent.name}")
        except OSError:
            continue
    return sorted(out)


def _cpus(inst: Path) -> list[int]:
    return sorted(int(p.name[3:]) for p in inst.glob("per_cpu/cpu*") if p.name[3:].isdigit())


def _text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _clock(text: str) -> str | None:
    m = re.search(r"\[([^\]]+)\]", text)
    return m[1] if m else (text.strip() or None)

