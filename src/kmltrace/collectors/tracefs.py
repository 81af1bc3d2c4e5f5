"""Our own tracefs instance: create it, configure it, and put back everything we touched.

Every write goes through :meth:`Instance.write`, which first records the file's original
content in a journal; :meth:`Instance.close` replays the journal backwards and removes the
instance directory it created. The top-level instance is never written: other tools (and
other users) trace at the same time.
"""

from __future__ import annotations

import difflib
import errno
import os
import re
import subprocess
import time
from pathlib import Path

from kmltrace.errors import RefusedError

TRACEFS_MOUNTS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
INSTANCE_PREFIX = "kmltrace-"
#: our instances are named kmltrace-<pid of the collector>-<n>, so leftovers can be told apart
INSTANCE_NAME = re.compile(r"^kmltrace-(\d+)-(\d+)$")

#: files whose content is a list (one entry per line): restored by truncating, then re-adding
LIST_FILES = {"set_event", "set_event_pid", "set_event_notrace_pid", "set_ftrace_filter",
              "set_ftrace_notrace", "set_ftrace_pid", "set_ftrace_notrace_pid"}

_instance_counter = 0


def find_tracefs() -> Path | None:
    """The tracefs mount point, or None when tracefs is not mounted."""
    for path in TRACEFS_MOUNTS:
        if (path / "instances").is_dir():
            return path
    return None


def mount_tracefs() -> Path:
    """Mount tracefs at /sys/kernel/tracing (the user asked for it with ``--mount``)."""
    target = TRACEFS_MOUNTS[0]
    result = subprocess.run(["mount", "-t", "tracefs", "nodev", str(target)],
                            capture_output=True, text=True)
    if result.returncode != 0 or not (target / "instances").is_dir():
        raise RefusedError(f"could not mount tracefs: {result.stderr.strip() or 'mount failed'}",
                           path=str(target))
    return target


def require_tracefs(mount: bool = False) -> Path:
    """The tracefs root, refusing clearly when we are not root or tracefs is missing."""
    if os.geteuid() != 0:
        raise RefusedError("collect needs root (it drives tracefs): run it with sudo")
    root = find_tracefs()
    if root is None:
        if not mount:
            raise RefusedError("tracefs is not mounted; mount it with "
                               "'mount -t tracefs nodev /sys/kernel/tracing' or rerun with "
                               "--mount", path=str(TRACEFS_MOUNTS[0]))
        root = mount_tracefs()
    return root


# -- events ------------------------------------------------------------------------------------

def available_events(root: Path) -> set[str]:
    """Every ``system:event`` the kernel offers."""
    try:
        text = (root / "available_events").read_text()
    except OSError as e:
        raise RefusedError(f"cannot read the kernel's event list: {e.strerror}",
                           path=str(root / "available_events")) from None
    return {line.strip() for line in text.splitlines() if ":" in line}


def resolve_events(spec: list[str], available: set[str],
                   where: str = "available_events") -> list[str]:
    """Expand ``system:*`` and check every name; refuse naming what is close to a typo."""
    systems = {name.split(":", 1)[0] for name in available}
    out: list[str] = []
    missing: list[str] = []
    for item in spec:
        item = item.strip()
        if not item:
            continue
        system, _, event = item.partition(":")
        if event in ("", "*"):
            if system not in systems:
                missing.append(item)
                continue
            names = sorted(n for n in available if n.split(":", 1)[0] == system)
        elif item in available:
            names = [item]
        else:
            missing.append(item)
            continue
        out.extend(n for n in names if n not in out)
    if missing:
        hints = []
        for item in missing:
            close = difflib.get_close_matches(item, sorted(available | {f"{s}:*" for s in systems}),
                                              n=3, cutoff=0.6)
            hints.append(f"{item} (close: {', '.join(close)})" if close else item)
        raise RefusedError("this kernel has no event " + "; ".join(hints),
                           path=where)
    return out


# -- leftovers ---------------------------------------------------------------------------------

def _collector_alive(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"kmltrace" in cmdline or b"python" in cmdline


def leftover_instances(root: Path) -> list[str]:
    """Our instances whose collector is gone (killed with SIGKILL, a crash)."""
    try:
        names = sorted(p.name for p in (root / "instances").iterdir())
    except OSError:
        return []
    out = []
    for name in names:
        match = INSTANCE_NAME.match(name)
        if match and not _collector_alive(int(match.group(1))):
            out.append(name)
    return out


def remove_instance(root: Path, name: str, attempts: int = 50) -> None:
    """Stop and remove an instance (rmdir is refused while a reader still holds a file)."""
    path = root / "instances" / name
    for rel, value in (("tracing_on", "0"), ("current_tracer", "nop")):
        try:
            (path / rel).write_text(value)
        except OSError:
            pass
    for _ in range(attempts):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise RefusedError(f"cannot remove tracefs instance: {e.strerror}",
                                   path=str(path)) from None
            time.sleep(0.1)
    raise RefusedError("tracefs instance still busy, not removed", path=str(path))


# -- the instance ------------------------------------------------------------------------------

class Instance:
    """A tracefs instance of our own, used as a context manager.

    ``Instance(root)`` creates ``instances/kmltrace-<pid>-<n>`` on enter; on exit (normal,
    exception, or a signal turned into one) it stops tracing, restores every file it wrote
    in reverse order and removes the directory it created.
    """

    def __init__(self, root: Path, name: str | None = None):
        global _instance_counter
        if name is None:
            _instance_counter += 1
            name = f"{INSTANCE_PREFIX}{os.getpid()}-{_instance_counter}"
        self.root = Path(root)
        self.name = name
        self.path = self.root / "instances" / name
        self.created = False
        #: (relative path, original content) in the order first written
        self.journal: list[tuple[str, str]] = []
        self.restore_errors: list[str] = []

    def __enter__(self) -> "Instance":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        if self.path.exists():
            return  # attaching to an existing instance: we only restore what we write
        try:
            self._make_dir()
        except OSError as e:
            raise RefusedError(f"cannot create a tracefs instance: {e.strerror}",
                               path=str(self.path)) from None
        self.created = True

    def _make_dir(self) -> None:
        self.path.mkdir()

    def _remove_dir(self) -> None:
        remove_instance(self.root, self.name)

    # reading and writing
    def read(self, rel: str) -> str:
        return (self.path / rel).read_text()

    def exists(self, rel: str) -> bool:
        return (self.path / rel).exists()

    def write(self, rel: str, value: str, append: bool = False) -> None:
        """Write `value` to the instance file `rel`, journaling its original content."""
        target = self.path / rel
        if not any(r == rel for r, _ in self.journal):
            self.journal.append((rel, target.read_text()))
        flags = os.O_WRONLY | (os.O_APPEND if append else os.O_TRUNC)
        fd = os.open(target, flags)
        try:
            os.write(fd, value.encode() if value else b"")
        except OSError as e:
            raise RefusedError(f"tracefs refused {value!r}: {e.strerror}", path=str(target)) \
                from None
        finally:
            os.close(fd)

    def close(self) -> None:
        """Put back everything: tracing off, every journaled file, then remove the instance."""
        if self.exists("tracing_on") and self.created:
            self._quiet_write("tracing_on", "0")
        for rel, original in reversed(self.journal):
            self._restore(rel, original)
        self.journal.clear()
        if self.created:
            try:
                self._remove_dir()
            except Exception as e:  # noqa: BLE001 - reported, never hidden
                self.restore_errors.append(str(e))
            self.created = False

    def _restore(self, rel: str, original: str) -> None:
        name = rel.rsplit("/", 1)[-1]
        try:
            if name in LIST_FILES:
                self._quiet_write(rel, "", strict=True)
                for line in original.splitlines():
                    line = line.strip()
                    if line and not line.startswith("#"):
                        self._quiet_write(rel, line + "\n", append=True, strict=True)
            elif name == "current_tracer" or name == "trace_clock":
                value = original.strip()
                if "[" in value:  # trace_clock lists all clocks, the current one in brackets
                    value = value[value.index("[") + 1:value.index("]")]
                self._quiet_write(rel, value, strict=True)
            else:
                self._quiet_write(rel, original.strip(), strict=True)
        except OSError as e:
            self.restore_errors.append(f"{self.path / rel}: {e.strerror or e}")

    def _quiet_write(self, rel: str, value: str, append: bool = False,
                     strict: bool = False) -> None:
        try:
            fd = os.open(self.path / rel, os.O_WRONLY | (os.O_APPEND if append else os.O_TRUNC))
            try:
                os.write(fd, value.encode())
            finally:
                os.close(fd)
        except OSError:
            if strict:
                raise
