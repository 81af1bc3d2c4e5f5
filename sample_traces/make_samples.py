#!/usr/bin/env python3
"""Regenerate the real sample captures under sample_traces/ from one run of the kmlwork workload.

Run as root on a machine with tracefs at /sys/kernel/tracing, gcc, trace-cmd and perf:

    sudo python3 sample_traces/make_samples.py            # both captures
    sudo python3 sample_traces/make_samples.py --only workload

The workload capture: ONE run of kmlwork, started by `perf record` through `sh -c`, is seen at
once by several tracefs instances (one per text/raw variant, each filtered to the workload's
process tree with set_event_pid + options/event-fork) and by perf, so every format holds the same
events.  The system capture: about one second of the whole machine, unfiltered, while kmlwork runs
once.  Each capture directory gets expected.json (numbers from the workload's own output) and a
PROVENANCE.md listing the exact commands that ran.

Only the script's own instances (kmlsamp-*-PID) are touched, except during `trace-cmd extract`,
which changes top-level tracing files; those are saved before and restored after.
"""

from __future__ import annotations

import argparse
import datetime
import errno
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRACEFS = Path("/sys/kernel/tracing")
EVENTS = [
    "exceptions:page_fault_user", "exceptions:page_fault_kernel", "irq_vectors:*", "nmi:*",
    "raw_syscalls:sys_enter", "raw_syscalls:sys_exit", "sched:sched_switch",
    "sched:sched_process_exec", "sched:sched_process_fork", "sched:sched_process_exit",
    "signal:*",
]
#: top-level tracefs files `trace-cmd extract` may change; restored afterwards
TOP_LEVEL_STATE = ["tracing_on", "current_tracer", "buffer_size_kb", "set_event", "trace_clock",
                   "set_event_pid", "set_ftrace_pid", "tracing_cpumask"]
LOSSY_BUFFER_KB = 8  # per CPU: a few pages, far less than the workload writes
MAX_SYSTEM_TEXT = 4_000_000  # bytes of the system capture's trace.txt
DEFAULT_ARGS = (97, 1009, 53, 31)  # N M K P: distinct primes, so no count matches by accident
COMMANDS: list[str] = []
PERF_REFUSED: list[str] = []  # events perf refused to record here  # every external command run, for PROVENANCE.md


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    COMMANDS.append(shlex.join(cmd))
    return subprocess.run(cmd, check=True, **kw)


def write(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def append(path: Path, text: str) -> None:
    """Append to a tracefs file (Python's "a" mode seeks, which tracefs refuses)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def note(text: str) -> None:
    """Record a tracefs write done by this script itself (for PROVENANCE.md)."""
    COMMANDS.append(text)


class Instance:
    """One tracefs instance owned by this script, with the sample events enabled, tracing off."""

    def __init__(self, role: str, buffer_kb: int, pid_filter: bool = True,
                 options: dict[str, str] | None = None):
        self.name = f"kmlsamp-{role}-{os.getpid()}"
        self.path = TRACEFS / "instances" / self.name
        self.path.mkdir()
        note(f"mkdir {self.path}")
        try:
            self.setup(buffer_kb, pid_filter, options or {})
        except BaseException:
            self.remove()
            raise

    def setup(self, buffer_kb: int, pid_filter: bool, options: dict[str, str]) -> None:
        self.set("tracing_on", "0")
        self.set("buffer_size_kb", str(buffer_kb))
        if pid_filter:
            self.set("options/event-fork", "1")
        for opt, value in options.items():
            self.set(f"options/{opt}", value)
        for event in EVENTS:
            append(self.path / "set_event", event + "\n")
        note(f"echo EVENT >> {self.path}/set_event   (for each of {' '.join(EVENTS)})")

    def set(self, rel: str, value: str) -> None:
        write(self.path / rel, value + "\n")
        note(f"echo {value} > {self.path}/{rel}")

    def read(self, rel: str) -> str:
        return (self.path / rel).read_text()

    def enabled_events(self) -> list[str]:
        return sorted(line.strip() for line in self.read("set_event").splitlines() if line.strip())

    def remove(self) -> None:
        if not self.path.exists():  # trace-cmd extract -B removes the instance it read
            return
        try:
            write(self.path / "tracing_on", "0\n")
            write(self.path / "set_event", "\n")
        except OSError:
            pass
        for _ in range(50):
            try:
                self.path.rmdir()
                note(f"rmdir {self.path}")
                return
            except OSError as e:
                if e.errno != errno.EBUSY:
                    raise
                time.sleep(0.1)
        print(f"warning: could not remove {self.path}", file=sys.stderr)


def read_nonblocking(path: Path, chunk: int) -> bytes:
    """Drain a consuming tracefs file (trace_pipe, trace_pipe_raw) until it is empty."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    parts = []
    try:
        while True:
            try:
                data = os.read(fd, chunk)
            except BlockingIOError:
                break
            if not data:
                break
            parts.append(data)
    finally:
        os.close(fd)
    return b"".join(parts)


def perf_events(build_dir: Path) -> tuple[list[str], list[str]]:
    """EVENTS expanded, split into those perf can record and those it refuses.

    (On 6.18 with perf 6.1, perf_event_open refuses irq_vectors:irq_work_exit with EACCES.)
    """
    expanded = []
    for event in EVENTS:
        system, name = event.split(":")
        if name == "*":
            expanded += sorted(f"{system}:{p.name}" for p in (TRACEFS / "events" / system).iterdir()
                               if p.is_dir())
        else:
            expanded.append(event)
    def accepted(events: list[str]) -> bool:
        probe = subprocess.run(["perf", "record", "-q", "-o", str(build_dir / "probe.data"), "-e",
                                ",".join(events), "--", "true"], capture_output=True)
        return probe.returncode == 0

    def split(events: list[str]) -> tuple[list[str], list[str]]:
        if accepted(events):
            return events, []
        if len(events) == 1:
            return [], events
        half = len(events) // 2
        ok1, bad1 = split(events[:half])
        ok2, bad2 = split(events[half:])
        return ok1 + ok2, bad1 + bad2

    return split(expanded)


def build_workload(build_dir: Path) -> Path:
    exe = build_dir / "kmlwork"
    run(["gcc", "-O2", "-g", "-Wall", "-fno-stack-clash-protection", "-fno-stack-protector",
         "-o", str(exe), str(HERE / "workload" / "kmlwork.c")])
    return exe


def parse_workload_out(text: str) -> dict:
    values = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        values[key] = value
    ints = ["pid", "child_pid", "child_status", "N", "M", "K", "P", "syscall_nr", "arch_prctl_nr",
            "arch_prctl_ret"]
    out = {k: int(values[k]) for k in ints}
    for k in ["stack_lo", "stack_hi", "heap_lo", "heap_hi", "child_heap_lo", "child_heap_hi",
              "arch_prctl_code"]:
        out[k] = values[k]
    out["exe"] = values["exe"]
    if int(values["child_pid_seen"]) != out["child_pid"] or out["child_status"] != 0:
        raise SystemExit(f"workload output is inconsistent:\n{text}")
    return out


def expected_numbers(w: dict, events_note: str) -> dict:
    """expected.json: the workload's own numbers (never computed from a parser)."""
    return {
        "source": "workload.out (printed by kmlwork itself)",
        "pid": w["pid"], "child_pid": w["child_pid"], "comm": "kmlwork", "exe": w["exe"],
        "N": w["N"], "M": w["M"], "K": w["K"], "P": w["P"],
        "ranges": {
            "stack": {"pid": w["pid"], "start": w["stack_lo"], "end": w["stack_hi"],
                      "pages": w["N"]},
            "heap": {"pid": w["pid"], "start": w["heap_lo"], "end": w["heap_hi"], "pages": w["N"]},
            "child_heap": {"pid": w["child_pid"], "start": w["child_heap_lo"],
                           "end": w["child_heap_hi"], "pages": w["P"]},
        },
        "expect": {
            "page_faults_in_range": {
                "exceptions:page_fault_user pid==pid and stack.start<=address<stack.end": w["N"],
                "exceptions:page_fault_user pid==pid and heap.start<=address<heap.end": w["N"],
                "exceptions:page_fault_user pid==child_pid and child_heap range": w["P"],
            },
            "syscalls": {
                "syscall_nr": w["syscall_nr"], "syscall_name": "getppid",
                "sys_enter id==syscall_nr, pid==pid, after the sched_process_exec of kmlwork": w["M"],
                "sys_enter id==syscall_nr, pid==child_pid": w["K"],
                "arch_prctl_nr": w["arch_prctl_nr"], "arch_prctl_code": w["arch_prctl_code"],
                "sys_enter id==arch_prctl_nr and args[0]==arch_prctl_code, pid==pid": 1,
                "arch_prctl_ret": w["arch_prctl_ret"],
            },
            "process_tree": {
                "sched_process_exec filename ending in kmlwork, pid==pid": 1,
                "sched_process_fork child_pid==child_pid": 1,
                "sched_process_exit pid in (pid, child_pid)": 2,
            },
            "markers": {
                "ftrace:print (trace_marker) lines from pid": 10,
                "ftrace:print (trace_marker) lines from child_pid": 2,
                "note": "perf cannot record ftrace:print; perf files have no markers",
            },
        },
        "notes": [
            "The workload is started by `sh -c '...; exec ./kmlwork ...'`: the same pid runs dash "
            "first, and dash itself calls getppid once and arch_prctl (ARCH_SET_FS etc.) during "
            "startup. Count the parent's getppid calls after the sched_process_exec event whose "
            "filename ends in kmlwork (the second exec of that pid; the first is /usr/bin/sh).",
            "ld.so/libc also call arch_prctl (other codes): only args[0]==0x1001 is ARCH_SET_GS.",
            "Text `trace`, `trace_pipe` and `trace-cmd report` timestamps are microseconds; "
            "trace.dat, raw pages and perf --ns are nanoseconds.",
            events_note,
        ],
    }


def save_bundle(inst: Instance, bundle: Path, workload: dict, maps_dir: Path,
                command: list[str], stats_before: dict[int, str]) -> dict:
    """Drain `inst`'s per-CPU raw pages into the bundle layout of docs/INTERFACES.md."""
    ftrace = bundle / "ftrace"
    (ftrace / "stats").mkdir(parents=True)
    shutil.copyfile(inst.path / "events/header_page", ftrace / "header_page")
    shutil.copyfile(inst.path / "events/header_event", ftrace / "header_event")
    events = inst.enabled_events()
    for event in events + ["ftrace:print"]:
        system, name = event.split(":")
        dest = ftrace / "events" / system / name
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(inst.path / "events" / system / name / "format", dest / "format")
    page_size = int(inst.read("buffer_subbuf_size_kb").strip() or 4) * 1024
    cpus = sorted(int(p.name[3:]) for p in (inst.path / "per_cpu").iterdir())
    lost = 0
    for cpu in cpus:
        write(ftrace / "stats" / f"cpu{cpu}", stats_before[cpu])
        for line in stats_before[cpu].splitlines():
            if line.startswith("overrun:"):
                lost += int(line.split()[1])
        data = read_nonblocking(inst.path / f"per_cpu/cpu{cpu}/trace_pipe_raw", page_size)
        (ftrace / f"cpu{cpu}.raw").write_bytes(data)
    note(f"read {inst.path}/per_cpu/cpuN/trace_pipe_raw (O_NONBLOCK, {page_size}-byte reads, "
         f"until empty) > bundle/ftrace/cpuN.raw")
    shutil.copyfile(TRACEFS / "saved_cmdlines", ftrace / "saved_cmdlines")
    shutil.copyfile(TRACEFS / "saved_tgids", ftrace / "saved_tgids")
    write(ftrace / "trace_clock", inst.read("trace_clock"))
    clock = inst.read("trace_clock").split("[")[1].split("]")[0]

    processes = []
    for pid, key in ((workload["pid"], "pid"), (workload["child_pid"], "child_pid")):
        maps = []
        for line in (maps_dir / f"maps.{pid}").read_text().splitlines():
            parts = line.split(None, 5)
            start, end = parts[0].split("-")
            maps.append({"start": "0x" + start, "end": "0x" + end, "perms": parts[1],
                         "path": parts[5] if len(parts) > 5 else ""})
        processes.append({"pid": pid, "tgid": pid, "comm": "kmlwork", "exe": workload["exe"],
                          "maps": maps})
    (bundle / "processes.json").write_text(json.dumps(processes, indent=1) + "\n")

    from kmltrace.bundle import write_manifest
    write_manifest(bundle, {
        "kind": "collect",
        "kernel": kernel_info(),
        "captured": {"events": events + ["ftrace:print"], "command": command, "clock": clock,
                     "lost_events": lost, "instance": inst.name, "cpus": len(cpus),
                     "page_size": page_size},
        "files": [{"path": "ftrace", "format": "ftrace_raw", "role": "data"},
                  {"path": "processes.json", "role": "meta"}],
    })
    return {"cpus": cpus, "lost": lost}


class CountMismatch(SystemExit):
    """A capture whose counts are not the workload's (kept apart so the run can be retried)."""


#: a real kernel occasionally shows one more fault than the workload made (seen once in
#: dozens of runs on a loaded machine: a second exception at an already-touched heap page);
#: the capture is then retried rather than committed with numbers that are not exact
CAPTURE_ATTEMPTS = 3


def check_counts(trace_txt: Path, w: dict) -> None:
    """Self-check of the capture (not of kmltrace): the workload's numbers must be exact."""
    import re
    if trace_txt.name.startswith("perf-script"):
        # `  kmlwork 18664 [000]   659.812085919:   raw_syscalls:sys_enter: NR 110 (...)`
        line_re = re.compile(r"^\s*.*?\s(\d+)(?:/\d+)?\s+\[\d+\]\s+[\d.]+:\s+\w+:(\w+): (.*)$")
    else:
        # tracefs text (optional (tgid) and flags columns) and trace-cmd report
        line_re = re.compile(r"^\s*.*?-(\d+)\s+(?:\(\s*[\d-]+\)\s+)?\[\d+\]\s+(?:\S+\s+)?"
                             r"[\d.]+: (\w+):\s+(.*)$")
    ranges = {"stack": (w["pid"], w["stack_lo"], w["stack_hi"], w["N"]),
              "heap": (w["pid"], w["heap_lo"], w["heap_hi"], w["N"]),
              "child_heap": (w["child_pid"], w["child_heap_lo"], w["child_heap_hi"], w["P"])}
    faults = dict.fromkeys(ranges, 0)
    getppid = {w["pid"]: 0, w["child_pid"]: 0}
    set_gs = 0
    exec_seen = False
    for line in trace_txt.read_text(errors="replace").splitlines():
        m = line_re.match(line)
        if not m:
            continue
        pid, event, rest = int(m[1]), m[2], m[3]
        if event == "sched_process_exec" and pid == w["pid"] and "kmlwork" in rest:
            exec_seen = True
        elif event == "page_fault_user":
            address = int(rest.split("address=")[1].split()[0], 16)
            for name, (rpid, lo, hi, _) in ranges.items():
                if pid == rpid and int(lo, 16) <= address < int(hi, 16):
                    faults[name] += 1
        elif event == "sys_enter" and exec_seen and pid in getppid:
            nr = int(rest.split()[1])
            if nr == w["syscall_nr"]:
                getppid[pid] += 1
            elif nr == w["arch_prctl_nr"] and rest.split("(")[1].startswith("1001,"):
                set_gs += 1
    want = {name: r[3] for name, r in ranges.items()}
    got = {"faults": faults, "getppid": getppid, "set_gs": set_gs}
    expect = {"faults": want, "getppid": {w["pid"]: w["M"], w["child_pid"]: w["K"]}, "set_gs": 1}
    if got != expect:
        raise CountMismatch(f"{trace_txt}: counts are not exact: got {got}, expected {expect}")
    print(f"{trace_txt}: counts exact ({got})")


def kernel_info() -> dict:
    return {"release": platform.release(), "uname": " ".join(os.uname()),
            "cmdline": Path("/proc/cmdline").read_text().strip(), "kml": False,
            "kml_evidence": []}


def machine_description() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    return f"{os.cpu_count()} CPUs ({model}), {int(mem) // 1024} MiB RAM"


def tool_versions() -> dict:
    out = {}
    for name, cmd in (("gcc", ["gcc", "--version"]), ("trace-cmd", ["trace-cmd", "--version"]),
                      ("perf", ["perf", "--version"])):
        try:
            text = subprocess.run(cmd, capture_output=True, text=True).stdout
            out[name] = next(l for l in text.splitlines() if l.strip()).strip()
        except (OSError, StopIteration):
            out[name] = "not found"
    return out


class TopLevelState:
    """Save and restore the top-level tracefs files trace-cmd extract touches."""

    def __init__(self):
        self.saved = {}
        for rel in TOP_LEVEL_STATE:
            try:
                self.saved[rel] = (TRACEFS / rel).read_text()
            except OSError:
                pass
        self.options = {p.name: p.read_text().strip() for p in (TRACEFS / "options").iterdir()}
        self.instances = sorted(p.name for p in (TRACEFS / "instances").iterdir())

    def restore(self) -> list[str]:
        changed = []
        for rel, text in self.saved.items():
            if (TRACEFS / rel).read_text() == text:
                continue
            changed.append(rel)
            if rel == "trace_clock":
                value = text.split("[")[1].split("]")[0]
            elif rel == "current_tracer":
                value = text.strip()
            elif rel == "buffer_size_kb":
                value = text.split()[0]
            else:
                value = None
            if rel in ("set_event", "set_event_pid", "set_ftrace_pid"):
                with open(TRACEFS / rel, "w") as f:  # truncate, then re-add each line
                    f.write("\n")
                for line in text.splitlines():
                    if line.strip() and not line.startswith("#"):
                        append(TRACEFS / rel, line + "\n")
            elif value is not None:
                write(TRACEFS / rel, value + "\n")
            else:
                write(TRACEFS / rel, text)
        for name, value in self.options.items():
            path = TRACEFS / "options" / name
            if path.read_text().strip() != value:
                changed.append(f"options/{name}")
                write(path, value + "\n")
        return changed


def capture_workload(out: Path, args: tuple[int, ...], build_dir: Path) -> None:
    exe = build_workload(build_dir)
    maps_dir = build_dir / "maps"
    maps_dir.mkdir(exist_ok=True)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    instances = {
        "text": Instance("text", 2048),
        "tgid": Instance("tgid", 2048, options={"record-tgid": "1"}),
        "pipe": Instance("pipe", 2048),
        "dat": Instance("dat", 2048),
    }
    try:
        # all pid filters first, then tracing_on: the first instance also holds the shell's
        # few syscalls that turn the others on (all are equal from the exec of kmlwork on)
        starts = " ".join(f"echo $$ > {i.path}/set_event_pid;" for i in instances.values()) + \
            " " + " ".join(f"echo 1 > {i.path}/tracing_on;" for i in instances.values())
        markers = " ".join(f"-m {i.path}/trace_marker" for i in instances.values())
        shell = (f"{starts} exec ./kmlwork {markers} -d {maps_dir} "
                 + " ".join(str(a) for a in args))
        perf_ok, perf_refused = perf_events(build_dir)
        PERF_REFUSED[:] = perf_refused
        note(f"(perf record -e EVENT -- true refused: {' '.join(perf_refused) or 'none'}; "
             "those are left out of the perf recording)")
        perf_events_arg = ",".join(perf_ok)
        perf_data = out / "perf.data"
        command = ["perf", "record", "-q", "-o", str(perf_data), "-e", perf_events_arg, "--",
                   "sh", "-c", shell]
        with open(out / "workload.out", "w") as stdout:
            run(command, cwd=build_dir, stdout=stdout)
        for inst in instances.values():
            inst.set("tracing_on", "0")
        workload = parse_workload_out((out / "workload.out").read_text())

        # 1. text variants: `trace` is not consuming, so one instance is re-read per option
        text = instances["text"]
        shutil.copyfile(text.path / "trace", out / "trace.txt")
        note(f"cat {text.path}/trace > trace.txt")
        text.set("options/irq-info", "0")
        shutil.copyfile(text.path / "trace", out / "trace-noirqinfo.txt")
        note(f"cat {text.path}/trace > trace-noirqinfo.txt")
        text.set("options/irq-info", "1")
        text.set("options/sym-offset", "1")
        shutil.copyfile(text.path / "trace", out / "trace-symoffset.txt")
        note(f"cat {text.path}/trace > trace-symoffset.txt")
        text.set("options/sym-addr", "1")
        shutil.copyfile(text.path / "trace", out / "trace-symaddr.txt")
        note(f"cat {text.path}/trace > trace-symaddr.txt")
        text.set("options/sym-addr", "0")
        text.set("options/sym-offset", "0")
        shutil.copyfile(instances["tgid"].path / "trace", out / "trace-tgid.txt")
        note(f"cat {instances['tgid'].path}/trace > trace-tgid.txt")
        (out / "trace_pipe.txt").write_bytes(
            read_nonblocking(instances["pipe"].path / "trace_pipe", 1 << 16))
        note(f"cat {instances['pipe'].path}/trace_pipe (O_NONBLOCK, until empty) > trace_pipe.txt")

        for name in ("trace.txt", "trace-noirqinfo.txt", "trace-tgid.txt", "trace_pipe.txt"):
            check_counts(out / name, workload)

        # 2. raw pages of the same instance as trace.txt, as a bundle (this consumes them)
        raw = instances["text"]
        stats = {int(p.name[3:]): (p / "stats").read_text() for p in (raw.path / "per_cpu").iterdir()}
        save_bundle(raw, out / "bundle", workload, maps_dir, command, stats)

        # 3. trace.dat through trace-cmd extract (changes top-level state: save, restore)
        state = TopLevelState()
        extracted = build_dir / "extract.dat"
        try:
            run(["trace-cmd", "extract", "-B", instances["dat"].name, "-o", str(extracted)],
                cwd=build_dir, stdout=subprocess.DEVNULL)
        finally:
            changed = state.restore()
            if changed:
                note(f"restored top-level {', '.join(changed)} after trace-cmd extract")
        # trace-cmd extract -B removes the instance it read; nothing else may go away
        after = sorted(p.name for p in (TRACEFS / "instances").iterdir())
        gone = set(state.instances) - set(after) - {instances["dat"].name}
        if gone:
            print(f"warning: instances vanished during trace-cmd extract: {sorted(gone)}",
                  file=sys.stderr)
        run(["trace-cmd", "convert", "-i", str(extracted), "-o", str(out / "trace.dat"),
             "--file-version", "7", "--compression", "zstd"], stdout=subprocess.DEVNULL)
        run(["trace-cmd", "convert", "-i", str(extracted), "-o", str(out / "trace-v6.dat"),
             "--file-version", "6", "--compression", "none"], stdout=subprocess.DEVNULL)
        with open(out / "trace-cmd-report.txt", "w") as f:
            run(["trace-cmd", "report", "-i", str(out / "trace.dat")], stdout=f)
        with open(out / "trace-cmd-report-R.txt", "w") as f:
            run(["trace-cmd", "report", "-R", "-i", str(out / "trace.dat")], stdout=f)

        check_counts(out / "trace-cmd-report.txt", workload)

        # 4. perf script text
        for name, extra in (("perf-script.txt", []), ("perf-script-ns.txt", ["--ns"]),
                            ("perf-script-F.txt",
                             ["-F", "comm,pid,tid,cpu,time,event,trace", "--ns"])):
            with open(out / name, "w") as f:
                run(["perf", "script", "-i", str(perf_data)] + extra, stdout=f,
                    stderr=subprocess.DEVNULL)
        for name in ("perf-script.txt", "perf-script-F.txt"):
            check_counts(out / name, workload)
        if perf_data.stat().st_size > 2 * 1024 * 1024:
            perf_data.unlink()
        else:
            os.chmod(perf_data, 0o644)

        (out / "expected.json").write_text(json.dumps(expected_numbers(
            workload, "All files of this capture hold the same run of the workload."),
            indent=2) + "\n")
        write_provenance(out, "workload", workload, args, instances)
    finally:
        for inst in instances.values():
            inst.remove()


def capture_system(out: Path, args: tuple[int, ...], build_dir: Path, seconds: float) -> None:
    exe = build_workload(build_dir)
    maps_dir = build_dir / "maps-system"
    maps_dir.mkdir(exist_ok=True)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    # one instance: `trace` is read first (not consuming), then its raw pages are drained,
    # so trace.txt and the bundle hold exactly the same events
    instances = {"text": Instance("system", 8192, pid_filter=False)}
    try:
        markers = []
        for inst in instances.values():
            markers += ["-m", str(inst.path / "trace_marker")]
        command = ["./kmlwork", *markers, "-d", str(maps_dir), *(str(a) for a in args)]
        for inst in instances.values():
            inst.set("tracing_on", "1")
        start = time.monotonic()
        time.sleep(seconds / 2)
        with open(out / "workload.out", "w") as stdout:
            run(command, cwd=build_dir, stdout=stdout)
        time.sleep(max(0.0, seconds - (time.monotonic() - start)))
        for inst in instances.values():
            inst.set("tracing_on", "0")
        note(f"(tracing was on for {seconds} s in total, kmlwork started after {seconds / 2} s)")
        workload = parse_workload_out((out / "workload.out").read_text())
        shutil.copyfile(instances["text"].path / "trace", out / "trace.txt")
        note(f"cat {instances['text'].path}/trace > trace.txt")
        check_counts(out / "trace.txt", workload)
        raw = instances["text"]
        stats = {int(p.name[3:]): (p / "stats").read_text() for p in (raw.path / "per_cpu").iterdir()}
        save_bundle(raw, out / "bundle", workload, maps_dir, command, stats)
        (out / "expected.json").write_text(json.dumps(expected_numbers(
            workload, "System-wide, unfiltered: every process of the machine is in this capture; "
            "on this (non-KML) kernel every process is user or kthread."), indent=2) + "\n")
        write_provenance(out, "system", workload, args, instances)
    finally:
        for inst in instances.values():
            inst.remove()


def overrun(inst: Instance) -> dict[int, str]:
    return {int(p.name[3:]): (p / "stats").read_text() for p in (inst.path / "per_cpu").iterdir()}


def stats_total(stats: dict[int, str], key: str) -> int:
    return sum(int(line.split(":")[1]) for text in stats.values() for line in text.splitlines()
               if line.startswith(key + ":"))


def capture_lossy(out: Path, args: tuple[int, ...], build_dir: Path) -> None:
    """The workload into rings far too small for it (overwrite mode): raw pages and trace.dat
    whose page headers carry missed-events counts; the kernel's overrun counts are the truth."""
    build_workload(build_dir)
    maps_dir = build_dir / "maps-lossy"
    maps_dir.mkdir(exist_ok=True)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    instances = {"raw": Instance("lossyraw", LOSSY_BUFFER_KB),
                 "dat": Instance("lossydat", LOSSY_BUFFER_KB)}
    try:
        starts = " ".join(f"echo $$ > {i.path}/set_event_pid;" for i in instances.values()) + \
            " " + " ".join(f"echo 1 > {i.path}/tracing_on;" for i in instances.values())
        markers = " ".join(f"-m {i.path}/trace_marker" for i in instances.values())
        command = ["sh", "-c", f"{starts} exec ./kmlwork {markers} -d {maps_dir} "
                   + " ".join(str(a) for a in args)]
        with open(out / "workload.out", "w") as stdout:
            run(command, cwd=build_dir, stdout=stdout)
        for inst in instances.values():
            inst.set("tracing_on", "0")
        workload = parse_workload_out((out / "workload.out").read_text())
        raw_stats = overrun(instances["raw"])
        dat_stats = overrun(instances["dat"])
        (out / "trace-stats").mkdir()
        for cpu, text in dat_stats.items():
            write(out / "trace-stats" / f"cpu{cpu}", text)
        note(f"cat {instances['dat'].path}/per_cpu/cpuN/stats > trace-stats/cpuN")
        save_bundle(instances["raw"], out / "bundle", workload, maps_dir, command, raw_stats)
        state = TopLevelState()
        extracted = build_dir / "extract-lossy.dat"
        try:
            run(["trace-cmd", "extract", "-B", instances["dat"].name, "-o", str(extracted)],
                cwd=build_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        finally:
            changed = state.restore()
            if changed:
                note(f"restored top-level {', '.join(changed)} after trace-cmd extract")
        run(["trace-cmd", "convert", "-i", str(extracted), "-o", str(out / "trace.dat"),
             "--file-version", "7", "--compression", "zstd"], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        with open(out / "trace-cmd-report.txt", "w") as f:
            run(["trace-cmd", "report", "-i", str(out / "trace.dat")], stdout=f)
        expected = expected_numbers(
            workload, "LOSSY: the rings were far too small, so most events are lost and the "
            "workload's counts are NOT all present; use expected.lost_events instead.")
        expected["lost_events"] = {
            "source": "the kernel's per_cpu/cpuN/stats after the run (independent of any parser)",
            "bundle": {"overrun": stats_total(raw_stats, "overrun"),
                       "entries": stats_total(raw_stats, "entries")},
            "trace.dat": {"overrun": stats_total(dat_stats, "overrun"),
                          "entries": stats_total(dat_stats, "entries")},
        }
        (out / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")
        write_provenance(out, "lossy", workload, args, instances)
    finally:
        for inst in instances.values():
            inst.remove()


FILE_NOTES = {
    "workload.out": "stdout of kmlwork: pids, N M K P, exact touched address ranges",
    "expected.json": "the workload's numbers (from workload.out) that tests assert",
    "trace.txt": "tracefs `trace` text, default options (header, irq-info flags column), us",
    "trace-noirqinfo.txt": "tracefs `trace` text with options/irq-info=0 (no flags column)",
    "trace-symoffset.txt": "tracefs `trace` text with options/sym-offset=1 (changes only the "
                           "ftrace:print function column, `tracing_mark_write+0x91/0x170`; "
                           "%ps fields of events stay `sym`)",
    "trace-symaddr.txt": "tracefs `trace` text with sym-offset=1 and sym-addr=1 (adds "
                         "`<ffffffff...>` after the print function)",
    "trace-tgid.txt": "tracefs `trace` text of an instance with options/record-tgid=1 ((tgid) column)",
    "trace_pipe.txt": "tracefs `trace_pipe` text (no header; consumed from its own instance)",
    "trace.dat": "trace-cmd extract -B, converted to file version 7 with zstd compression",
    "trace-v6.dat": "the same, converted to file version 6 without compression",
    "trace-cmd-report.txt": "`trace-cmd report -i trace.dat` (each line starts with the "
                            "instance name `kmlsamp-dat-PID:` because the buffer is an instance)",
    "trace-cmd-report-R.txt": "`trace-cmd report -R -i trace.dat` (raw field values)",
    "perf.data": "perf record of the same run (perf starts the workload)",
    "perf-script.txt": "`perf script` (default fields, us)",
    "perf-script-ns.txt": "`perf script --ns`",
    "perf-script-F.txt": "`perf script -F comm,pid,tid,cpu,time,event,trace --ns`",
    "trace-stats": "per_cpu/cpuN/stats of the trace.dat instance before extract (overrun = lost)",
    "bundle": "kmltrace bundle: bundle.json, processes.json, ftrace/ raw trace_pipe_raw pages "
              "(drained from the same instance as trace.txt, after the text was read) with header_page, header_event, format files, stats, saved_cmdlines/tgids",
}


BUNDLE_NOTES = {
    "bundle.json": "manifest (kmltrace.bundle.write_manifest): kind collect, kernel, captured "
                   "events/command/clock/lost_events, files",
    "processes.json": "pid, tgid, comm, exe and /proc/PID/maps of the workload's two processes "
                      "(copied by kmlwork itself at its end)",
    "header_page": "copy of the instance's events/header_page",
    "header_event": "copy of events/header_event",
    "saved_cmdlines": "copy of the top-level saved_cmdlines (pid -> comm)",
    "saved_tgids": "copy of the top-level saved_tgids (pid -> tgid)",
    "trace_clock": "the instance's trace_clock file",
}


def clock_offset_note(out: Path, pid: int) -> str:
    """perf and the tracefs `local` clock need not agree: measure it on the exec event."""
    def stamp(path: Path, marker: str) -> float | None:
        for line in path.read_text(errors="replace").splitlines():
            if "sched_process_exec" in line and "kmlwork" in line and str(pid) in line:
                return float(line.split(marker)[0].split()[-1].rstrip(":"))
        return None
    perf_ns = out / "perf-script-ns.txt"
    if not perf_ns.exists() or not (out / "trace.txt").exists():
        return ""
    ftrace = stamp(out / "trace.txt", ": sched_process_exec")
    perf = stamp(perf_ns, ": ")
    if ftrace is None or perf is None:
        return ""
    return (f"  On this machine perf's clock and the tracefs `local` clock differ: the exec of "
            f"kmlwork is at {ftrace:.6f} in trace.txt and {perf:.9f} in perf-script-ns.txt "
            f"(perf - ftrace = {(perf - ftrace) * 1e3:+.3f} ms).\n")


def write_provenance(out: Path, kind: str, workload: dict, args: tuple[int, ...],
                     instances: dict[str, Instance]) -> None:
    files = []
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out)
        if not path.is_file() or path.name == "PROVENANCE.md" or "events" in rel.parts:
            continue
        desc = FILE_NOTES.get(str(rel), BUNDLE_NOTES.get(path.name, ""))
        files.append(f"| `{rel}` | {path.stat().st_size} | {desc} |")
    files.append("| `bundle/ftrace/events/<system>/<event>/format` | | format files of the "
                 "enabled events and ftrace/print |")
    bundle_desc = FILE_NOTES["bundle"]
    versions = tool_versions()
    what = ("ONE run of the workload seen at once by five tracefs instances (each filtered to the "
            "workload's process tree: set_event_pid written by the starting shell, "
            "options/event-fork=1) and by `perf record`, which started it."
            if kind == "workload" else
            "The whole machine, unfiltered (no set_event_pid), for a fraction of a second (the "
            "window is halved from 1 s until the text is small enough; see below), while the "
            "workload ran once (started by the script, not through sh). Other processes of the "
            "machine (other users' shells, kthreads, interrupts) are in it."
            if kind == "system" else
            f"LOSSY on purpose: one run of the workload (started by `sh -c`, no perf) recorded by "
            f"two instances filtered to its process tree whose rings are only "
            f"{LOSSY_BUFFER_KB} KiB per CPU in overwrite mode, so most events were overwritten. "
            f"`bundle/` holds the raw pages of one instance, `trace.dat` (v7, zstd) and "
            f"`trace-cmd-report.txt` the other's; their page headers carry the missed-events "
            f"flags and counts. The kernel's own overrun counts (per_cpu/cpuN/stats: "
            f"`bundle/ftrace/stats/` and `trace-stats/`) are summed in expected.json "
            f"`lost_events`.")
    text = f"""# {out.name}: real capture ({kind})

Regenerate with `sudo python3 sample_traces/make_samples.py --only {kind}` (it rebuilds the
workload with gcc and overwrites this directory; pids and addresses change, expected.json follows).

{what}

- captured: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')}
- kernel: `{' '.join(os.uname())}` (not KML)
- machine: {machine_description()}, virtual machine
- kernel command line: `{Path('/proc/cmdline').read_text().strip()}`
- tools: {versions['gcc']}; {versions['trace-cmd']}; {versions['perf']}
- trace clock: `local` (instance default). Text timestamps (`trace`, `trace_pipe`,
  `trace-cmd report`, `perf script` without `--ns`) have microsecond precision; raw pages,
  trace.dat and `perf script --ns` have nanoseconds. perf timestamps use perf's clock.
{clock_offset_note(out, workload["pid"])}- comm: tracefs text shows the comm known when the text was read (`kmlwork` even for the
  pid's events before exec, when it was still `sh`); perf shows `sh` before the exec.
- events: {', '.join(EVENTS)} (and ftrace:print from trace_marker in the tracefs instances;
  perf cannot record ftrace:print; perf refused: {', '.join(PERF_REFUSED) or 'none'})
- workload: `kmlwork` from `sample_traces/workload/kmlwork.c`, arguments N M K P = {' '.join(map(str, args))}
  (pid {workload['pid']}, child {workload['child_pid']}); see expected.json for the exact ranges
  and counts, and its notes for how to count (the parent pid runs dash before exec).

## Exact commands (in order)

```
{chr(10).join(COMMANDS)}
```

## Files

| file | bytes | content |
|---|---|---|
{chr(10).join(files)}

`bundle/`: {bundle_desc}. bundle.json was written with `kmltrace.bundle.write_manifest`.
"""
    (out / "PROVENANCE.md").write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["workload", "system", "lossy"])
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--name", default=None, help="capture dir prefix (default host-<major.minor>)")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of the system capture")
    parser.add_argument("args", nargs="*", type=int, help="N M K P (default %(default)s)",
                        default=list(DEFAULT_ARGS))
    opts = parser.parse_args()
    if os.geteuid() != 0 or not (TRACEFS / "instances").is_dir():
        print("make_samples.py must run as root with tracefs at /sys/kernel/tracing", file=sys.stderr)
        return 2
    try:
        import kmltrace  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(HERE.parent / "src"))
    args = tuple(opts.args)
    if len(args) != 4:
        parser.error("give N M K P")
    release = ".".join(platform.release().split(".")[:2])
    prefix = opts.name or f"host-{release}"
    with tempfile.TemporaryDirectory(prefix="kmlsamp-") as tmp:
        build_dir = Path(tmp)
        os.chmod(build_dir, 0o755)
        if opts.only in (None, "workload"):
            for attempt in range(1, CAPTURE_ATTEMPTS + 1):
                COMMANDS.clear()
                try:
                    capture_workload(opts.out / f"{prefix}-workload", args, build_dir)
                    break
                except CountMismatch as e:
                    print(f"attempt {attempt}: {e}", file=sys.stderr)
                    if attempt == CAPTURE_ATTEMPTS:
                        raise
        if opts.only in (None, "lossy"):
            COMMANDS.clear()
            capture_lossy(opts.out / f"{prefix}-lossy", args, build_dir)
        if opts.only in (None, "system"):
            # other users' activity sets the size: halve the window until the text is small
            seconds = opts.seconds
            for _ in range(4):
                COMMANDS.clear()
                out = opts.out / f"{prefix}-system"
                capture_system(out, args, build_dir, seconds)
                size = (out / "trace.txt").stat().st_size
                if size <= MAX_SYSTEM_TEXT:
                    break
                print(f"system trace.txt is {size / 1e6:.1f} MB after {seconds} s; retrying shorter")
                seconds /= 2
    for kind in ("workload", "system", "lossy"):
        d = opts.out / f"{prefix}-{kind}"
        if d.exists():
            size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
            print(f"{d}: {size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
