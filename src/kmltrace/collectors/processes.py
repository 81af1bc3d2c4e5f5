"""Traced processes, recorded while they live: pid, tgid, comm, exe and memory maps.

/proc is read at each poll of the capture loop; a process is recorded the first time it is
seen with a given executable (so an exec into /trusted gives a second row) and its maps are
refreshed while it lives, so the last maps before it exits are kept. Processes the trace
shows but that were gone before they could be read are counted as missed, never hidden.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

PROC = Path("/proc")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def parse_maps(text: str) -> list[dict]:
    """``/proc/PID/maps`` lines as ``{"start", "end", "perms", "path"}`` (addresses hex)."""
    out = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 5 or "-" not in parts[0]:
            continue
        start, _, end = parts[0].partition("-")
        out.append({"start": f"0x{int(start, 16):x}", "end": f"0x{int(end, 16):x}",
                    "perms": parts[1], "path": parts[5].strip() if len(parts) > 5 else ""})
    return out


def read_process(pid: int) -> dict | None:
    """One process's row, or None when it is gone (or unreadable)."""
    base = PROC / str(pid)
    status = _read(base / "status")
    if status is None:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    if fields.get("State", "").strip()[:1] in ("Z", "X"):
        return None  # exited: nothing left to read but its name
    try:
        exe = os.readlink(base / "exe")
    except OSError:
        exe = None  # a kernel thread, or gone
    maps_text = _read(base / "maps")
    return {"pid": pid, "tgid": int(fields.get("Tgid", "0").strip() or 0),
            "comm": fields.get("Name", "").strip(), "exe": exe,
            "maps": parse_maps(maps_text) if maps_text else []}


def children(pid: int) -> list[int]:
    """Children of every thread of `pid`."""
    out = []
    try:
        tasks = list((PROC / str(pid) / "task").iterdir())
    except OSError:
        return out
    for task in tasks:
        text = _read(task / "children")
        if text:
            out.extend(int(c) for c in text.split())
    return out


def tree_tasks(pid: int) -> list[int]:
    """Every task (thread) of `pid` and of its descendant processes, as they are now."""
    out, todo, seen = [], [pid], set()
    while todo:
        proc = todo.pop()
        if proc in seen:
            continue
        seen.add(proc)
        try:
            out.extend(sorted(int(t.name) for t in (PROC / str(proc) / "task").iterdir()))
        except OSError:
            continue  # gone meanwhile
        todo.extend(children(proc))
    return out or [pid]


@dataclass
class ProcessWatcher:
    """Records processes of the traced set at every :meth:`poll`.

    ``roots``: pids whose whole process tree is traced (a started command, ``--pid``);
    ``comm``: trace processes with that name; neither: every process (system-wide capture,
    maps read only once per executable to keep polling cheap).
    """

    roots: list[int] = field(default_factory=list)
    comm: str | None = None
    exclude: set[int] = field(default_factory=set)
    rows: dict[tuple[int, str | None], dict] = field(default_factory=dict)
    #: processes of the traced tree learnt from fork notifications (ExecListener)
    tree: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: when each row was read (CLOCK_MONOTONIC ns, the proc connector's clock)
    read_at: dict[tuple[int, str | None], int] = field(default_factory=dict)

    def wants(self, pid: int) -> bool:
        """Is `pid` (a process) one we trace? Used on fork/exec notifications."""
        if pid in self.exclude:
            return False
        if self.roots:
            return pid in self.tree or pid in self.roots
        if self.comm is not None:
            return (_read(PROC / str(pid) / "comm") or "").strip() == self.comm
        return True

    def record(self, pid: int, ts_ns: int | None = None) -> bool:
        """Read `pid` now (called the moment it forks or execs, at `ts_ns` CLOCK_MONOTONIC:
        the trace's own clock when the instance uses "mono"). False: it could not be read."""
        read_ns = time.monotonic_ns()
        row = read_process(pid)
        if row is None or (row["exe"] is None and not row["maps"]):
            return False
        if ts_ns is not None:
            row["ts_ns"] = ts_ns
        with self.lock:
            self.rows[(pid, row["exe"])] = row
            self.read_at[(pid, row["exe"])] = read_ns
        return True

    def exec_seen(self, pid: int, ts_ns: int) -> None:
        """`pid` exec'd at `ts_ns` but was gone before it could be read there. A row of it
        read after that moment (at its fork, by a listener running late) shows the new
        image: it takes the exec's time, not the fork's."""
        with self.lock:
            for key, read_ns in self.read_at.items():
                if key[0] == pid and read_ns >= ts_ns and key in self.rows:
                    self.rows[key]["ts_ns"] = ts_ns

    def _pids(self) -> list[int]:
        if self.roots:
            seen, todo = [], list(self.roots) + sorted(self.tree)
            while todo:
                pid = todo.pop()
                if pid in seen:
                    continue
                seen.append(pid)
                todo.extend(children(pid))
            return seen
        pids = [int(p.name) for p in PROC.iterdir() if p.name.isdigit()]
        if self.comm is not None:
            pids = [p for p in pids
                    if (_read(PROC / str(p) / "comm") or "").strip() == self.comm]
        return pids

    def poll(self) -> None:
        refresh_maps = bool(self.roots) or self.comm is not None
        for pid in self._pids():
            if pid in self.exclude:
                continue
            try:
                exe = os.readlink(PROC / str(pid) / "exe")
            except OSError:
                exe = None
            key = (pid, exe)
            if exe is None and any(k[0] == pid for k in self.rows):
                continue  # a zombie (or exiting) process we already know: keep its row
            if key in self.rows and not refresh_maps:
                continue
            row = read_process(pid)
            if row is None or row["exe"] != exe:
                continue
            if key in self.rows and not row["maps"]:
                continue  # exiting: keep the maps read while it lived
            with self.lock:
                if key in self.rows and "ts_ns" in self.rows[key]:
                    row["ts_ns"] = self.rows[key]["ts_ns"]  # when it was seen to exec
                self.rows[key] = row

    def result(self) -> list[dict]:
        """Rows by pid; a pid's rows in the order its executables were seen."""
        with self.lock:
            rows = list(self.rows.values())
        return sorted(rows, key=lambda r: r["pid"])

    def missed(self, traced_pids: set[int]) -> list[int]:
        """Pids the trace shows executing or forked that were never read."""
        recorded = {r["pid"] for r in self.result()}
        return sorted(traced_pids - recorded)


# -- the proc connector: fork and exec as they happen ----------------------------------------

NETLINK_CONNECTOR = 11
CN_IDX_PROC = CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
NLMSG_DONE = 3
PROC_EVENT_FORK, PROC_EVENT_EXEC = 1, 2
_NLMSG = struct.Struct("=IHHII")       # nlmsghdr
_CN_MSG = struct.Struct("=IIIIHH")     # cn_msg: idx, val, seq, ack, len, flags
_EVENT = struct.Struct("=IIQ")         # proc_event: what, cpu, timestamp_ns
_EVENT_AT = _NLMSG.size + _CN_MSG.size
_DATA_AT = _EVENT_AT + _EVENT.size


class ExecListener(threading.Thread):
    """Reads a process the moment it forks or execs, told by the kernel's proc connector
    (netlink, root only), so that one living a few milliseconds is still recorded. Without
    the connector (no CONFIG_PROC_EVENTS, no permission) the watcher's polling remains."""

    def __init__(self, watcher: ProcessWatcher):
        super().__init__(name="kmltrace-exec-listener", daemon=True)
        self.watcher = watcher
        self.stopping = threading.Event()
        self.sock: socket.socket | None = None
        self.error: str | None = None

    def open(self) -> bool:
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
            sock.bind((0, CN_IDX_PROC))
            op = struct.pack("=I", PROC_CN_MCAST_LISTEN)
            cn = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(op), 0) + op
            sock.send(_NLMSG.pack(_NLMSG.size + len(cn), NLMSG_DONE, 0, 0, 0) + cn)
            sock.settimeout(0.1)
        except OSError as e:
            self.error = e.strerror or str(e)
            return False
        self.sock = sock
        return True

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError as e:  # ENOBUFS: we fell behind; polling covers the gap
                self.error = e.strerror or str(e)
                continue
            self.handle(data)

    def handle(self, data: bytes) -> None:
        if len(data) < _DATA_AT + 8:
            return
        what, _, ts_ns = _EVENT.unpack_from(data, _EVENT_AT)
        watcher = self.watcher
        if what == PROC_EVENT_FORK and len(data) >= _DATA_AT + 16:
            parent_pid, parent_tgid, child_pid, child_tgid = struct.unpack_from("=iiii", data,
                                                                                _DATA_AT)
            if child_pid != child_tgid:
                return  # a new thread: its process is already known
            if watcher.roots and (parent_tgid in watcher.tree or parent_tgid in watcher.roots):
                watcher.tree.add(child_tgid)
            if watcher.roots and watcher.wants(child_tgid):
                watcher.record(child_tgid, ts_ns)
        elif what == PROC_EVENT_EXEC:
            pid, tgid = struct.unpack_from("=ii", data, _DATA_AT)
            if watcher.wants(tgid) and not watcher.record(tgid, ts_ns):
                watcher.exec_seen(tgid, ts_ns)

    def stop(self) -> None:
        self.stopping.set()
        if self.is_alive():
            self.join(timeout=1)
        if self.sock is not None:
            self.sock.close()
