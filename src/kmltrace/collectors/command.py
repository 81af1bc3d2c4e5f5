"""The command `collect` traces, forked now and held before exec until the instance
filters on its pid and traces, so that its exec and everything after are in the trace."""

from __future__ import annotations

import os
import signal
import time


class GatedCommand:
    """A command forked now and held before exec until :meth:`release`, so that our
    instance can filter on its pid before it does anything."""

    def __init__(self, argv: list[str], stdout: int | None = None,
                 env: dict[str, str] | None = None):
        env = {**os.environ, **(env or {})}
        policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
        gate_r, gate_w = os.pipe()
        # closed by the exec itself (O_CLOEXEC): EOF on it tells the parent exec happened
        exec_r, exec_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:  # the child: wait for the gate, then become the command
            try:
                os.close(gate_w)
                os.close(exec_r)
                os.read(gate_r, 1)
                os.close(gate_r)
                # the command keeps the scheduling it would have had, whatever the collector's
                os.sched_setscheduler(0, policy, param)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                if stdout is not None:
                    os.dup2(stdout, 1)
                os.execvpe(argv[0], argv, env)
            except BaseException as e:  # noqa: BLE001 - the child must never return
                try:
                    os.write(2, f"kmltrace: cannot run {argv[0]!r}: {e}\n".encode())
                    os.write(exec_w, b"x")
                finally:
                    os._exit(127)
        os.close(gate_r)
        os.close(exec_w)
        self.pid = pid
        self._gate_w: int | None = gate_w
        self._exec_r: int | None = exec_r
        self.returncode: int | None = None

    def release(self) -> None:
        """Let the command exec, and wait until it has (so its exe and maps are its own)."""
        if self._gate_w is None:
            return
        try:
            os.write(self._gate_w, b"g")
        finally:
            os.close(self._gate_w)
            self._gate_w = None
        try:
            os.read(self._exec_r, 1)  # EOF at exec, a byte if exec failed
        finally:
            os.close(self._exec_r)
            self._exec_r = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid == self.pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.returncode

    def terminate(self, grace: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds."""
        self.release()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.poll() is not None:
                return
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and self.poll() is None:
                time.sleep(0.02)
        if self.poll() is None:
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
