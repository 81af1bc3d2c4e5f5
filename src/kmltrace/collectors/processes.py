"""Traced processes, recorded while they live: pid, tgid, comm, exe and memory maps.

/proc is read at each poll of the capture loop; a process is recorded the first time it is
seen with a given executable (so an exec into /trusted gives a second row) and its maps are
refreshed while it lives, so the last maps before it exits are kept. Processes the trace
shows but that were gone before they could be read are counted as missed, never hidden.
"""

from __future__ import annotations

import os
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

    def _pids(self) -> list[int]:
        if self.roots:
            seen, todo = [], list(self.roots)
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
            self.rows[key] = row

    def result(self) -> list[dict]:
        return sorted(self.rows.values(), key=lambda r: (r["pid"], r["exe"] or ""))

    def missed(self, traced_pids: set[int]) -> list[int]:
        """Pids the trace shows executing or forked that were never read."""
        recorded = {r["pid"] for r in self.rows.values()}
        return sorted(traced_pids - recorded)
