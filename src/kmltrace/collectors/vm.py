"""Run a QEMU virtual machine so that a reset leaves evidence, and save that evidence.

What is added to the user's (or the lab's) QEMU command line, and why:

- ``-d int,cpu_reset -D qemu.log`` under TCG (``-d cpu_reset`` only under KVM, where ``int``
  logs nothing): every exception with CPL, RSP, CR2 and the IDTR base, and the triple fault;
- ``-action reboot=shutdown,shutdown=pause``: a triple fault pauses the VM instead of resetting
  it, so its registers and memory are still those of the moment it died;
- a QMP socket and ``-S``: kmltrace starts the CPUs itself (after arming the host tracepoints)
  and at the end saves ``info registers`` (``registers.txt``) and a ``dump-guest-memory`` ELF
  core (``vmcore.elf``, zstd-compressed on request);
- the serial console into ``console.log`` (a ``-serial file:`` when the command has no serial of
  its own, otherwise QEMU's stdout copied there);
- under KVM, the host's ``kvm:*`` tracepoints of this QEMU's vCPU threads only (other VMs may
  run on the host), through our own tracefs instance, into ``kvm.txt``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from kmltrace.errors import RefusedError

QEMU_LOG = "qemu.log"
CONSOLE_LOG = "console.log"
REGISTERS = "registers.txt"
VMCORE = "vmcore.elf"
KVM_TRACE = "kvm.txt"
QMP_EVENTS = "qmp-events.jsonl"


class QMPError(Exception):
    pass


class QMP:
    """A minimal QMP client: one command at a time, events kept as they arrive."""

    def __init__(self, path: str, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise QMPError(f"no QMP socket at {path} after {timeout:.0f} s") from None
                time.sleep(0.02)
        self.timeout = timeout
        self.sock.settimeout(timeout)
        self.buffer = b""
        self.events: list[dict] = []
        self._read()  # the greeting
        self.command("qmp_capabilities")

    def _read(self) -> dict:
        while b"\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise QMPError("QEMU closed the QMP socket")
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def command(self, name: str, **arguments):
        message = {"execute": name}
        if arguments:
            message["arguments"] = arguments
        self.sock.sendall(json.dumps(message).encode() + b"\n")
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
            elif "error" in reply:
                raise QMPError(f"{name}: {reply['error'].get('desc', reply['error'])}")
            elif "return" in reply:
                return reply["return"]

    def poll(self) -> None:
        """Collect the events that arrived, without waiting."""
        self.sock.setblocking(False)
        try:
            while data := self.sock.recv(65536):
                self.buffer += data
        except (BlockingIOError, InterruptedError):
            pass
        finally:
            self.sock.settimeout(self.timeout)
        while b"\n" in self.buffer:
            self.events.append(self._read())

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def qemu_version(binary: str = "qemu-system-x86_64") -> str | None:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.splitlines()[0].strip() if out.stdout else None


def uses_kvm(argv: list[str]) -> bool:
    """Whether a QEMU command line asks for KVM (``-enable-kvm``, ``-accel kvm``, ``accel=kvm``)."""
    for i, arg in enumerate(argv):
        if arg in ("-enable-kvm", "--enable-kvm"):
            return True
        if arg in ("-accel", "--accel") and i + 1 < len(argv) and argv[i + 1].startswith("kvm"):
            return True
        if arg in ("-machine", "-M") and i + 1 < len(argv) and "accel=kvm" in argv[i + 1]:
            return True
    return False


def _has_serial(argv: list[str]) -> bool:
    return any(a in ("-serial", "-nographic", "--nographic") for a in argv)


def augment_command(argv: list[str], bundle: Path, qmp_path: str) -> tuple[list[str], bool]:
    """The QEMU command with what a post-mortem needs added (see the module docstring);
    also whether the console must be taken from QEMU's stdout."""
    kvm = uses_kvm(argv)
    extra = ["-d", "cpu_reset" if kvm else "int,cpu_reset", "-D", str(bundle / QEMU_LOG),
             "-action", "reboot=shutdown,shutdown=pause",
             "-qmp", f"unix:{qmp_path},server=on,wait=off", "-S"]
    console_from_stdout = _has_serial(argv)
    if not console_from_stdout:
        extra += ["-serial", f"file:{bundle / CONSOLE_LOG}"]
    if "-display" not in argv and "-nographic" not in argv:
        extra += ["-display", "none"]
    return [argv[0], *extra, *argv[1:]], console_from_stdout


@dataclass
class VmRun:
    """What a run ended with: why it ended, the files written, the QMP events seen."""

    end: str = "running"          # reset | shutdown | paused | exited | done | log_cap | timeout | interrupted
    returncode: int | None = None
    files: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    command: list[str] = field(default_factory=list)
    kvm: bool = False
    kvm_trace: str | None = None  # why the host tracepoints are missing, when they are
    errors: list[str] = field(default_factory=list)


def _status_end(events: list[dict]) -> str | None:
    for event in events:
        name = event.get("event")
        if name == "SHUTDOWN":
            return "reset" if event.get("data", {}).get("reason") == "guest-reset" else "shutdown"
        if name == "RESET" and event.get("data", {}).get("guest"):
            return "reset"
    for event in events:
        if event.get("event") == "GUEST_PANICKED":
            return "panicked"
    return None


class _KvmTrace:
    """Host kvm:* tracepoints of the given threads, in our own tracefs instance."""

    def __init__(self, threads: list[int], buffer_kb: int):
        from kmltrace.collectors import tracefs

        root = tracefs.find_tracefs()
        if os.geteuid() != 0 or root is None:
            raise RefusedError("host kvm tracepoints need root and tracefs")
        if not (root / "events" / "kvm").is_dir():
            raise RefusedError("this kernel has no kvm tracepoints")
        self.instance = tracefs.Instance(root)
        self.instance.open()
        try:
            self.instance.write("buffer_size_kb", str(buffer_kb))
            self.instance.write("events/kvm/filter",
                                " || ".join(f"common_pid == {t}" for t in threads))
            self.instance.write("events/kvm/enable", "1")
            self.instance.write("tracing_on", "1")
        except Exception:
            self.instance.close()
            raise

    def save(self, target: Path) -> None:
        try:
            self.instance.write("tracing_on", "0")
            target.write_text(self.instance.read("trace"))
        finally:
            self.instance.close()


def run_vm(argv: list[str], bundle: Path, *, timeout: float | None = None,
           log_cap: int | None = None, done=None, compress: bool = False,
           stdout=None, kvm_buffer_kb: int = 4096) -> VmRun:
    """Run the QEMU command `argv` with evidence capture into `bundle`.

    Ends when the guest resets (the VM is then paused, not reset), shuts down, QEMU exits,
    ``done(bundle)`` returns true (the lab's end marker), the QEMU log reaches `log_cap` bytes,
    `timeout` seconds pass, or on Ctrl-C; then saves registers and the memory dump.
    The host kvm events are kept in a ring of `kvm_buffer_kb` per CPU: the newest survive,
    and the end is what a post-mortem needs.
    """
    if shutil.which(argv[0]) is None and not Path(argv[0]).is_file():
        raise RefusedError(f"QEMU binary not found: {argv[0]}")
    bundle.mkdir(parents=True, exist_ok=True)
    result = VmRun(kvm=uses_kvm(argv))
    sockdir = tempfile.mkdtemp(prefix="kmltrace-qmp-")  # short path: unix sockets max 108 bytes
    qmp_path = os.path.join(sockdir, "qmp.sock")
    command, console_from_stdout = augment_command(argv, bundle, qmp_path)
    result.command = command
    console = open(bundle / CONSOLE_LOG, "ab") if console_from_stdout else None
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE if console else (stdout or subprocess.DEVNULL),
                            stderr=subprocess.PIPE, start_new_session=True)
    pumps = [_pump(proc.stdout, console, tee=stdout)] if console else []
    stderr_lines: list[bytes] = []
    pumps.append(_pump(proc.stderr, None, keep=stderr_lines))
    qmp = None
    kvm_trace = None
    try:
        try:
            qmp = QMP(qmp_path)
        except QMPError as e:
            proc.wait(timeout=5)
            raise RefusedError(f"QEMU did not start: "
                               f"{b''.join(stderr_lines).decode(errors='replace').strip() or e}")
        if result.kvm:
            try:
                # the vCPU threads, and QEMU's main thread (interrupt injection from devices)
                threads = [c["thread-id"] for c in qmp.command("query-cpus-fast")] + [proc.pid]
                kvm_trace = _KvmTrace(threads, kvm_buffer_kb)
            except (RefusedError, QMPError, ImportError, OSError) as e:
                result.kvm_trace = str(e)
        if "-S" not in argv:
            qmp.command("cont")
        result.end = _wait(proc, qmp, bundle, timeout, log_cap, done)
    except KeyboardInterrupt:
        result.end = "interrupted"
    finally:
        if qmp is not None and proc.poll() is None:
            _save_state(qmp, bundle, result, compress)
        if kvm_trace is not None:
            try:
                kvm_trace.save(bundle / KVM_TRACE)
            except (OSError, RefusedError) as e:
                result.kvm_trace = f"saving the host tracepoints failed: {e}"
        if qmp is not None:
            result.events = qmp.events
            qmp.close()
        _stop(proc)
        for pump in pumps:
            pump.join(timeout=2)
        if console:
            console.close()
        shutil.rmtree(sockdir, ignore_errors=True)
    result.returncode = proc.returncode
    if stderr_lines:
        result.errors.append(b"".join(stderr_lines).decode(errors="replace").strip())
    (bundle / QMP_EVENTS).write_text("".join(json.dumps(e) + "\n" for e in result.events))
    result.files = _files(bundle)
    _console_role(bundle, result.files)
    return result


def _console_role(bundle: Path, files: list[dict]) -> None:
    """A console that no format understands (firmware or a bare-metal kernel, not Linux) is
    kept as metadata rather than reported as a bad input on every analysis."""
    from kmltrace.errors import KmltraceError
    from kmltrace.formats.sniff import detect

    for entry in files:
        if entry["path"] == CONSOLE_LOG and entry["role"] == "data":
            try:
                detect(bundle / CONSOLE_LOG)
            except KmltraceError:
                entry["role"] = "meta"
                entry["note"] = "not a kernel console format kmltrace parses"


def _pump(stream, sink, tee=None, keep=None) -> threading.Thread:
    def copy():
        for chunk in iter(lambda: stream.read1(65536), b""):
            if sink:
                sink.write(chunk)
                sink.flush()
            if tee:
                tee.write(chunk)
                tee.flush()
            if keep is not None and sum(map(len, keep)) < 65536:
                keep.append(chunk)
    thread = threading.Thread(target=copy, daemon=True)
    thread.start()
    return thread


def _wait(proc, qmp: QMP, bundle: Path, timeout, log_cap, done) -> str:
    deadline = None if timeout is None else time.monotonic() + timeout
    log = bundle / QEMU_LOG
    while True:
        if proc.poll() is not None:
            return "exited"
        qmp.poll()
        end = _status_end(qmp.events)
        if end:
            return end
        if done is not None and done(bundle):
            return "done"
        if log_cap is not None and log.exists() and log.stat().st_size >= log_cap:
            return "log_cap"
        if deadline is not None and time.monotonic() > deadline:
            return "timeout"
        time.sleep(0.02)


def _save_state(qmp: QMP, bundle: Path, result: VmRun, compress: bool) -> None:
    """Pause the VM, then save its registers and memory while it cannot change."""
    try:
        qmp.command("stop")
        registers = qmp.command("human-monitor-command", **{"command-line": "info registers"})
        (bundle / REGISTERS).write_text(registers)
        core = bundle / VMCORE
        core.unlink(missing_ok=True)
        qmp.command("dump-guest-memory", paging=False, protocol=f"file:{core}")
        if compress and core.exists():
            _zstd(core)
        qmp.command("quit")
    except (QMPError, OSError) as e:
        result.errors.append(f"saving the VM state failed: {e}")


def _zstd(path: Path) -> Path:
    import zstandard

    target = path.with_name(path.name + ".zst")
    with open(path, "rb") as src, open(target, "wb") as dst:
        zstandard.ZstdCompressor(level=9).copy_stream(src, dst)
    path.unlink()
    return target


def _stop(proc) -> None:
    if proc.poll() is not None:
        return
    try:
        proc.wait(timeout=5)
        return
    except subprocess.TimeoutExpired:
        pass
    os.killpg(proc.pid, signal.SIGTERM)  # our own QEMU, started in its own session
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _files(bundle: Path) -> list[dict]:
    """The manifest's ``files`` entries for what a VM run wrote."""
    roles = {QEMU_LOG: ("data", None), CONSOLE_LOG: ("data", None), KVM_TRACE: ("data", None),
             VMCORE: ("data", "vmcore"), VMCORE + ".zst": ("data", "vmcore"),
             REGISTERS: ("meta", None), QMP_EVENTS: ("meta", None)}
    out = []
    for name, (role, fmt) in roles.items():
        path = bundle / name
        if path.is_file() and (path.stat().st_size or role == "meta"):
            entry = {"path": name, "role": role, "bytes": path.stat().st_size}
            if fmt:
                entry["format"] = fmt
            out.append(entry)
    return out


def collect_vm(options) -> dict:
    """``kmltrace collect --vm -- qemu-system-x86_64 ARGS...``: run the user's VM with the
    evidence capture above and write a ``collect`` bundle; returns collect's result object.

    `options` is the collect verb's CollectOptions (output, duration, command,
    command_stdout).
    """
    import sys
    from datetime import datetime, timezone

    from kmltrace import bundle as bundles

    command = list(options.command)
    if not command:
        raise RefusedError("--vm needs a QEMU command line after --, e.g. "
                           "kmltrace collect --vm -- qemu-system-x86_64 -kernel bzImage ...")
    if "qemu-system" not in Path(command[0]).name:
        raise RefusedError(f"--vm runs a QEMU system emulator, not {command[0]!r}")
    out = options.output
    if out is None:
        out = Path(datetime.now().strftime("kmltrace-vm-%Y%m%d-%H%M%S"))
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise RefusedError("output directory exists and is not empty", path=str(out))
    if options.command_stdout is not None:
        stdout = open(options.command_stdout, "wb", closefd=False)
    else:
        stdout = sys.stdout.buffer
    started = time.monotonic()
    result = run_vm(command, out, timeout=options.duration, stdout=stdout)
    duration = time.monotonic() - started
    accel = "kvm" if result.kvm else "tcg"
    manifest = {
        "kind": "collect",
        "kernel": {"release": None, "kml": None, "kml_evidence": []},
        "captured": {"vm": True, "command": result.command, "accel": accel, "end": result.end,
                     "qemu": qemu_version(command[0]), "returncode": result.returncode,
                     "events": ["kvm:*"] if (out / KVM_TRACE).exists() else [],
                     "kvm_trace": result.kvm_trace, "lost_events": 0,
                     "started": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        "files": result.files,
    }
    bundles.write_manifest(out, manifest)
    _, parsed = bundles.load_bundle(out)
    return {"bundle": str(out), "events": sum(p.events.height for p in parsed),
            "lost_events": 0, "bytes": sum(f.get("bytes", 0) for f in result.files),
            "duration_s": round(duration, 3), "stop_reason": result.end, "vm": True,
            "accel": accel, "files": [f["path"] for f in result.files],
            "errors": [str(e) for p in parsed for e in p.errors] + result.errors}
