"""One ``kmltrace collect`` run: configure our instance, stream, record, write the bundle.

The verb (kmltrace.verbs.collect) parses options and shows progress; everything that
touches the machine happens here, in an order that never loses the start of the command:
the command is started gated (blocked before exec), the instance filters on its pid, tracing
starts, and only then the command is released.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from kmltrace.collectors import metadata, tracefs
from kmltrace.collectors.bundle_writer import BundleWriter, default_output
from kmltrace.collectors.command import GatedCommand
from kmltrace.collectors.processes import ExecListener, ProcessWatcher, tree_tasks
from kmltrace.collectors.stream import Streamer, no_change, realtime
from kmltrace.errors import KmltraceError, RefusedError

#: per-CPU ring buffer of our instance: 4 MiB per CPU holds ~80k events, 160 ms at 500k
#: events/s on one CPU, against a reader woken at 10% and polling every 20 ms at the latest
DEFAULT_BUFFER_KB = 4096
POLL_INTERVAL = 0.02
#: a pump that moved this much means a burst: poll again without sleeping
BUSY_BYTES = 256 * 1024
BUSY_INTERVAL = 0.002
#: the kernel wakes the collector when a CPU's buffer is this full (buffer_percent)
WAKE_PERCENT = 10
#: larger captures are not decoded at the end (decoding took ~12x the raw pages in memory:
#: 2.4 GB for 190 MB); their event table is built when the bundle is first read
DECODE_NOW_MAX_BYTES = 256 << 20
PROGRESS_INTERVAL = 0.5
TRACE_CLOCK = "mono"

DEFAULT_EVENTS = ["exceptions:*", "irq_vectors:*", "nmi:*", "raw_syscalls:*",
                  "sched:sched_switch", "sched:sched_process_exec", "sched:sched_process_fork",
                  "sched:sched_process_exit", "signal:*"]
KVM_EVENTS = ["kvm:*"]
#: written to trace_marker; always recorded, nothing to enable
MARKER_EVENT = "ftrace:print"
#: the command finds our instance's trace_marker here (lines written to it are ftrace:print)
MARKER_ENV = "KMLTRACE_TRACE_MARKER"
#: entry-path functions worth the function tracer, when an instance may use it
ENTRY_FUNCTION_PATTERNS = ["exc_page_fault", "exc_double_fault", "asm_exc_*", "kml_*"]


@dataclass
class CollectOptions:
    output: Path | None = None
    duration: float | None = None
    events: list[str] = field(default_factory=lambda: list(DEFAULT_EVENTS))
    pid: int | None = None
    comm: str | None = None
    buffer_kb: int = DEFAULT_BUFFER_KB
    perf: bool = False
    kvm: bool = False
    mount: bool = False
    command: list[str] = field(default_factory=list)
    #: where the command's stdout goes (stderr under --json); None: inherit
    command_stdout: int | None = None


@dataclass
class Progress:
    elapsed: float
    events: int
    lost: int
    bytes: int
    rate: float


def event_spec(items: list[str] | None, kvm: bool) -> list[str]:
    """The requested event set: ``default`` expands to DEFAULT_EVENTS; --kvm adds kvm:*."""
    out: list[str] = []
    for item in items or ["default"]:
        for part in item.split(","):
            part = part.strip()
            if part == "default":
                out.extend(DEFAULT_EVENTS)
            elif part:
                out.append(part)
    if kvm:
        out.extend(KVM_EVENTS)
    return out


def clean_leftovers(mount: bool = False) -> list[str]:
    """``--clean``: remove instances left by collectors that died; returns their names."""
    root = tracefs.require_tracefs(mount)
    names = tracefs.leftover_instances(root)
    for name in names:
        tracefs.remove_instance(root, name)
    return names


def _ring_stats(instance: tracefs.Instance, cpus: list[int]) -> dict[int, dict]:
    out = {}
    for cpu in cpus:
        try:
            out[cpu] = metadata.parse_stats(instance.read(f"per_cpu/cpu{cpu}/stats"))
        except OSError:
            out[cpu] = {}
    return out


def _totals(stats: dict[int, dict]) -> tuple[int, int]:
    events = sum(int(s.get("read_events", 0) or 0) + int(s.get("entries", 0) or 0)
                 for s in stats.values())
    lost = sum(metadata.lost_from_stats(s) for s in stats.values())
    return events, lost


class Collector:
    """Runs one capture. ``stop`` (a threading.Event) ends it early (SIGINT, SIGTERM)."""

    def __init__(self, options: CollectOptions, stop: threading.Event | None = None,
                 on_progress=None, warn=None):
        self.options = options
        self.stop = stop or threading.Event()
        self.on_progress = on_progress
        self.warn = warn or (lambda message: None)
        self.command_proc: GatedCommand | None = None

    # -- the command, started blocked before exec ----------------------------------------------
    def _start_gated(self, marker: Path) -> "GatedCommand":
        import shutil
        program = self.options.command[0]
        if shutil.which(program) is None:
            raise RefusedError("command not found or not executable", path=program)
        return GatedCommand(self.options.command, self.options.command_stdout,
                            env={MARKER_ENV: str(marker)})

    def _release_command(self) -> None:
        if self.command_proc is not None:
            self.command_proc.release()

    def _end_command(self) -> int | None:
        proc = self.command_proc
        if proc is None:
            return None
        self._release_command()
        if proc.poll() is None:
            proc.terminate()
        return proc.returncode

    # -- the capture ----------------------------------------------------------------------------
    def run(self) -> dict:
        opts = self.options
        if opts.pid is not None and opts.comm is not None:
            raise RefusedError("--pid and --comm cannot be combined")
        if opts.command and (opts.pid is not None or opts.comm is not None):
            raise RefusedError("a command is traced with its own process tree; "
                               "--pid/--comm are for processes already running")
        root = tracefs.require_tracefs(opts.mount)
        leftovers = tracefs.leftover_instances(root)
        for name in leftovers:
            self.warn(f"tracefs instance {root / 'instances' / name} was left behind by a "
                      f"collector that died; remove it with 'kmltrace collect --clean'")
        if opts.pid is not None and not Path(f"/proc/{opts.pid}").exists():
            raise RefusedError(f"no process with pid {opts.pid}")
        # ftrace:print (trace_marker) is always recorded: it has nothing to enable
        spec = [e for e in event_spec(opts.events, opts.kvm)
                if e not in (MARKER_EVENT, "ftrace:*")]
        events = tracefs.resolve_events(spec,
                                        tracefs.available_events(root),
                                        where=str(root / "available_events"))
        writer = BundleWriter(opts.output or default_output())
        try:
            result = self._capture(root, events, writer)
        except BaseException:
            self._end_command()
            writer.abandon()
            raise
        result["leftover_instances"] = leftovers
        return result

    def _capture(self, root: Path, events: list[str], writer: BundleWriter) -> dict:
        opts = self.options
        started = time.time()
        info: dict = {"events": events + [MARKER_EVENT], "buffer_kb": opts.buffer_kb,
                      "command": list(opts.command), "started_unix": started}
        watcher = ProcessWatcher(exclude={os.getpid()})
        with tracefs.Instance(root) as inst:
            info["instance"] = inst.name
            inst.write("tracing_on", "0")
            inst.write("buffer_size_kb", str(opts.buffer_kb))
            # CLOCK_MONOTONIC, synchronised across CPUs, and the clock of the proc connector
            # (processes.json ts_ns) and of perf record -k mono: one timeline for all three
            if TRACE_CLOCK in inst.read("trace_clock").replace("[", " ").replace("]", " ").split():
                inst.write("trace_clock", TRACE_CLOCK)
            info["overwrite"] = inst.read("options/overwrite").strip() == "1"
            if inst.exists("buffer_percent"):
                inst.write("buffer_percent", str(WAKE_PERCENT))
            for event in events:
                system, name = event.split(":", 1)
                inst.write(f"events/{system}/{name}/enable", "1")
            info["filter"] = self._filters(inst, events, watcher)
            info["function_tracer"] = self._function_tracer(root, inst)
            self._copy_formats(root, inst, writer, events, info["function_tracer"])
            cpus = sorted(int(p.name[3:]) for p in (inst.path / "per_cpu").iterdir()
                          if p.name[3:].isdigit())
            streamer = Streamer(inst.path, writer.ftrace, page_size=self._page_size(inst),
                                cpus=cpus)
            perf = None
            restore_scheduling = no_change
            listener = ExecListener(watcher)
            if listener.open():
                listener.start()
                if info["filter"].get("system_wide") and inst.exists("set_event_notrace_pid"):
                    # the listener is a thread of ours: its reads are not the machine's work
                    inst.write("set_event_notrace_pid", f" {listener.native_id}", append=True)
                    info["filter"]["excluded_pids"].append(listener.native_id)
                info["process_reads"] = "at fork and exec (proc connector) and polled"
            else:
                info["process_reads"] = f"polled (proc connector: {listener.error})"
            try:
                if opts.perf:
                    from kmltrace.collectors.perf import PerfRecorder
                    perf = PerfRecorder(events, writer.path, pid=self._perf_pid(),
                                        clock=metadata.current_clock(inst.read("trace_clock")))
                    perf.start()
                streamer.open()
                info["scheduling"], restore_scheduling = realtime()
                inst.write("tracing_on", "1")
                self._release_command()
                watcher.poll()
                info["tracing_started_unix"] = time.time()
                stop_reason = self._loop(inst, streamer, watcher, cpus)
                inst.write("tracing_on", "0")
                info["stop_reason"] = stop_reason
                info["command_exit"] = self._end_command()
                streamer.drain()
                restore_scheduling()
                watcher.poll()
            finally:
                restore_scheduling()
                listener.stop()
                streamer.close()
                if perf is not None:
                    info["perf"] = perf.stop()
                    writer.add_file("perf.txt", "data")
                    writer.add_file("perf.data", "meta")
                    writer.add_file("perf.log", "meta")
            stats = _ring_stats(inst, cpus)
            for cpu, text in ((c, inst.read(f"per_cpu/cpu{c}/stats")) for c in cpus):
                (writer.ftrace / "stats").mkdir(exist_ok=True)
                (writer.ftrace / "stats" / f"cpu{cpu}").write_text(text)
            info["clock"] = metadata.current_clock(inst.read("trace_clock"))
            (writer.ftrace / "trace_clock").write_text(inst.read("trace_clock"))
        info["restore_errors"] = inst.restore_errors
        for error in inst.restore_errors:
            self.warn(f"could not restore: {error}")
        # top-level files are only read: the pid -> comm/tgid maps the decoder may use
        writer.copy_tracefs_file(root / "saved_cmdlines", "saved_cmdlines")
        writer.copy_tracefs_file(root / "saved_tgids", "saved_tgids")
        info["duration_s"] = round(time.time() - info["tracing_started_unix"], 3)
        info["per_cpu"] = {str(c): s for c, s in stats.items()}
        ring_events, lost = _totals(stats)
        info["lost_events"] = lost
        info["ring_buffer_events"] = ring_events
        info["bytes"] = streamer.bytes_written
        return self._write_bundle(writer, info, watcher, cpus)

    def _filters(self, inst, events, watcher) -> dict:
        opts = self.options
        if opts.command:
            self.command_proc = self._start_gated(inst.path / "trace_marker")
            watcher.roots = [self.command_proc.pid]
            inst.write("options/event-fork", "1")
            inst.write("set_event_pid", str(self.command_proc.pid))
            return {"pid": self.command_proc.pid, "follow_forks": True}
        if opts.pid is not None:
            watcher.roots = [opts.pid]
            inst.write("options/event-fork", "1")
            # set_event_pid filters tasks: every thread of the tree that exists already;
            # event-fork adds the ones created from now on
            tasks = tree_tasks(opts.pid)
            inst.write("set_event_pid", " ".join(str(t) for t in tasks))
            return {"pid": opts.pid, "follow_forks": True, "tasks_at_start": len(tasks)}
        if opts.comm is not None:
            watcher.comm = opts.comm
            quoted = opts.comm.replace("\\", "\\\\").replace('"', '\\"')
            for system in sorted({e.split(":", 1)[0] for e in events}):
                inst.write(f"events/{system}/filter", f'comm == "{quoted}"')
            return {"comm": opts.comm}
        # system-wide: leave out the collector itself (its own reads would be traced)
        if inst.exists("set_event_notrace_pid"):
            inst.write("set_event_notrace_pid", str(os.getpid()))
        return {"system_wide": True, "excluded_pids": [os.getpid()]}

    def _perf_pid(self) -> int | None:
        if self.command_proc is not None:
            return self.command_proc.pid
        return self.options.pid

    def _function_tracer(self, root: Path, inst) -> dict:
        """Best effort: the function tracer on the entry-path functions this kernel has."""
        try:
            text = (root / "available_filter_functions").read_text()
        except OSError as e:
            return {"enabled": False, "reason": f"available_filter_functions: {e.strerror}"}
        import fnmatch
        names = sorted({line.split()[0] for line in text.splitlines() if line.strip()})
        wanted = [n for n in names if any(fnmatch.fnmatchcase(n, p)
                                          for p in ENTRY_FUNCTION_PATTERNS)]
        if not wanted:
            return {"enabled": False, "reason": "no entry-path function is traceable"}
        try:
            inst.write("set_ftrace_filter", "\n".join(wanted) + "\n")
            inst.write("current_tracer", "function")
        except KmltraceError as e:
            return {"enabled": False, "reason": e.message, "functions": wanted}
        return {"enabled": True, "functions": wanted}

    def _page_size(self, inst) -> int:
        try:
            return int(inst.read("buffer_subbuf_size_kb").strip()) * 1024
        except (OSError, ValueError):
            return os.sysconf("SC_PAGE_SIZE")

    def _copy_formats(self, root, inst, writer, events, function_tracer) -> None:
        events_dir = inst.path / "events"
        writer.copy_tracefs_file(events_dir / "header_page", "header_page")
        writer.copy_tracefs_file(events_dir / "header_event", "header_event")
        names = list(events) + [MARKER_EVENT]
        if function_tracer.get("enabled"):
            names.append("ftrace:function")
        for event in names:
            system, name = event.split(":", 1)
            writer.copy_tracefs_file(events_dir / system / name / "format",
                                     f"events/{system}/{name}/format")
        writer.add_file("ftrace", "data", "ftrace_raw")

    def _loop(self, inst, streamer: Streamer, watcher: ProcessWatcher, cpus) -> str:
        opts = self.options
        start = time.monotonic()
        next_progress = start + PROGRESS_INTERVAL
        next_watch = start
        last_events, last_time = 0, start
        while True:
            moved = streamer.pump()
            now = time.monotonic()
            if now >= next_watch:
                watcher.poll()
                # a traced tree is small: follow it closely; all of /proc less often
                next_watch = now + (POLL_INTERVAL if watcher.roots else 0.2)
            if self.on_progress and now >= next_progress:
                events, lost = _totals(_ring_stats(inst, cpus))
                rate = (events - last_events) / max(now - last_time, 1e-6)
                last_events, last_time = events, now
                self.on_progress(Progress(now - start, events, lost, streamer.bytes_written, rate))
                next_progress = now + PROGRESS_INTERVAL
            if self.stop.is_set():
                return "signal"
            if opts.duration is not None and now - start >= opts.duration:
                return "duration"
            if self.command_proc is not None and self.command_proc.poll() is not None:
                return "command_exit"
            if opts.pid is not None and not Path(f"/proc/{opts.pid}").exists():
                return "pid_exit"
            # the kernel wakes us when a buffer is WAKE_PERCENT full; under a burst, come
            # back to the buffers sooner anyway
            streamer.wait(POLL_INTERVAL if moved < BUSY_BYTES else BUSY_INTERVAL)

    def _write_bundle(self, writer: BundleWriter, info: dict, watcher, cpus) -> dict:
        kallsyms = writer.path / "kallsyms"
        info["kallsyms"] = metadata.snapshot_kallsyms(kallsyms)
        if info["kallsyms"].get("saved"):
            writer.add_file("kallsyms", "meta")
        kernel = metadata.kernel_info(kallsyms if kallsyms.exists() else None)
        processes = watcher.result()
        writer.write_json("processes.json", processes)
        manifest = {"kind": "collect", "kernel": kernel, "captured": info,
                    "cpus": len(cpus)}
        writer.write_manifest(manifest)
        if info["bytes"] > DECODE_NOW_MAX_BYTES:
            self.warn(f"{info['bytes'] / 1e6:.0f} MB of raw pages: the event table is not built "
                      f"now but when the bundle is first read")
        try:
            decoded = self._decode(writer.path) if info["bytes"] <= DECODE_NOW_MAX_BYTES \
                else None
        except Exception as e:  # noqa: BLE001 - the raw pages are saved; decoding can be redone
            self.warn(f"the event table could not be built now ({type(e).__name__}: {e}); "
                      f"the raw pages are saved and are decoded when the bundle is read")
            decoded = None
            info["decode_errors"] = [f"{type(e).__name__}: {e}"]
        if decoded is not None:
            info["events_decoded"] = decoded["events"]
            traced = decoded["traced_pids"]
            missed = watcher.missed(traced)
            info["processes"] = {"recorded": len(processes), "missed": len(missed),
                                 "missed_pids": missed}
            info["decode_errors"] = decoded["errors"]
        else:
            info["processes"] = {"recorded": len(processes), "missed": None}
        writer.write_manifest(manifest)
        final = writer.finish()
        events = info.get("events_decoded", info["ring_buffer_events"])
        return {"bundle": str(final), "events": events,
                "events_counted_by": "decoder" if "events_decoded" in info else "ring_buffer",
                "lost_events": info["lost_events"], "bytes": info["bytes"],
                "duration_s": info["duration_s"], "stop_reason": info["stop_reason"],
                "command_exit": info.get("command_exit"), "instance": info["instance"],
                "processes": info["processes"], "kml": kernel["kml"],
                "function_tracer": info["function_tracer"].get("enabled", False),
                "perf": "perf" in info}

    def _decode(self, path: Path) -> dict | None:
        """Build the bundle's event table cache now; None when this build cannot decode."""
        try:
            from kmltrace.formats import ftrace_raw  # noqa: F401
        except ImportError:
            return None
        import polars as pl

        from kmltrace.bundle import load_bundle
        _, parsed = load_bundle(path)
        ftrace = [p for p in parsed if p.format == "ftrace_raw"]
        traced: set[int] = set()
        count = 0
        for p in ftrace:
            count += p.events.height
            ev = p.events
            if ev.height and "event" in ev.columns:
                execs = ev.filter(pl.col("event") == "sched_process_exec")["pid"].drop_nulls()
                traced.update(int(x) for x in execs.to_list())
                if "child_pid" in ev.columns:
                    forks = ev.filter(pl.col("event") == "sched_process_fork")["child_pid"]
                    traced.update(int(x) for x in forks.drop_nulls().to_list())
        return {"events": count, "traced_pids": traced,
                "errors": [str(e) for p in parsed for e in p.errors]}
