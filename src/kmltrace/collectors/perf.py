"""``--perf``: perf record with the same tracepoints alongside the ftrace capture.

perf uses its own per-CPU buffers (no tracefs setting is touched); its ``perf script``
text goes into the bundle as ``perf.txt`` and ``perf.data`` is kept beside it.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from kmltrace.errors import RefusedError


#: ftrace trace_clock names perf record -k can use too
PERF_CLOCKS = {"mono": "CLOCK_MONOTONIC", "mono_raw": "CLOCK_MONOTONIC_RAW",
               "boot": "CLOCK_BOOTTIME", "tai": "CLOCK_TAI"}


class PerfRecorder:
    def __init__(self, events: list[str], out_dir: Path, pid: int | None = None,
                 mmap_pages: int = 1024, clock: str | None = None):
        self.perf = shutil.which("perf")
        if self.perf is None:
            raise RefusedError("--perf needs perf on PATH (Debian: apt-get install linux-perf)")
        self.events = events
        self.data = out_dir / "perf.data"
        self.text = out_dir / "perf.txt"
        self.log = out_dir / "perf.log"
        self.pid = pid
        self.mmap_pages = mmap_pages
        #: ftrace's clock; perf uses the same one where it can ("mono" -> -k mono)
        self.clock = clock if clock in PERF_CLOCKS else None
        self.proc: subprocess.Popen | None = None
        #: events perf refused (some tracepoints cannot be opened through perf)
        self.skipped: list[str] = []

    def command(self) -> list[str]:
        cmd = [self.perf, "record", "-o", str(self.data), "-m", str(self.mmap_pages)]
        if self.clock:
            cmd += ["-k", PERF_CLOCKS[self.clock]]
        for event in self.events:
            cmd += ["-e", event]
        cmd += ["-p", str(self.pid)] if self.pid is not None else ["-a"]
        return cmd

    def start(self, timeout: float = 10.0) -> None:
        """Start perf and wait until it is recording; events perf refuses are left out
        (and listed in the manifest) rather than failing the whole capture."""
        for _ in range(len(self.events) + 1):
            refused = self._try_start(timeout)
            if refused is None:
                return
            self.events = [e for e in self.events if e != refused]
            self.skipped.append(refused)
            if not self.events:
                break
        raise RefusedError("perf record refused every event: " +
                           self.log.read_text(errors="replace").strip()[-300:],
                           path=str(self.log))

    def _try_start(self, timeout: float) -> str | None:
        """Start perf; returns the event it refused, or None once it records."""
        self.data.unlink(missing_ok=True)
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL,
                                     stderr=self.log.open("wb"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = self.log.read_text(errors="replace")
                refused = re.search(r"enable (\S+:\S+) event", log)
                if refused and refused.group(1) in self.events:
                    return refused.group(1)
                raise RefusedError("perf record exited at once: " + log.strip()[-300:],
                                   path=str(self.log))
            if self.data.exists() and self.data.stat().st_size > 0:
                time.sleep(0.2)  # header written; counters are enabled right after
                return None
            time.sleep(0.05)
        return None

    def stop(self) -> dict:
        """Stop perf, write perf script text; returns what the manifest records."""
        info = {"command": self.command(), "data": self.data.name, "skipped": self.skipped,
                "clock": self.clock or "perf"}
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        info["exit"] = self.proc.returncode if self.proc else None
        log = self.log.read_text(errors="replace") if self.log.exists() else ""
        lost = [line for line in log.splitlines() if "lost" in line.lower()]
        if lost:
            info["lost"] = lost
        with self.text.open("wb") as out:
            result = subprocess.run([self.perf, "script", "-i", str(self.data)],
                                    stdout=out, stderr=subprocess.PIPE)
        info["script_exit"] = result.returncode
        if result.returncode != 0:
            info["script_error"] = result.stderr.decode(errors="replace").strip()[-300:]
        info["text"] = self.text.name
        return info
