"""Stream the per-CPU ring buffers to disk while the capture runs.

Whole pages are moved with splice (ring buffer -> pipe -> file, no copy through Python)
whenever the kernel has full pages; the last, partly filled pages are read with read() when
the capture stops. Every file descriptor is non-blocking and one loop serves all CPUs, so
the capture's length is bounded by the disk, not by the ring buffer.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
from dataclasses import dataclass, field
from pathlib import Path

SPLICE_F_NONBLOCK = 2
#: bytes moved per splice call: many pages at once
SPLICE_CHUNK = 1 << 20
F_SETPIPE_SZ = 1031


@dataclass
class CpuStream:
    cpu: int
    source: int          # trace_pipe_raw, O_NONBLOCK
    out: int             # cpuN.raw
    pipe_r: int | None = None
    pipe_w: int | None = None
    bytes: int = 0


@dataclass
class Streamer:
    """Copies ``per_cpu/cpuN/trace_pipe_raw`` of an instance to ``out_dir/cpuN.raw``."""

    instance_path: Path
    out_dir: Path
    page_size: int = 4096
    cpus: list[int] = field(default_factory=list)
    streams: list[CpuStream] = field(default_factory=list)
    splice_ok: bool = True
    bytes_closed: int = 0

    def open(self) -> None:
        per_cpu = self.instance_path / "per_cpu"
        if not self.cpus:
            self.cpus = sorted(int(p.name[3:]) for p in per_cpu.iterdir()
                               if p.name.startswith("cpu") and p.name[3:].isdigit())
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for cpu in self.cpus:
            source = os.open(per_cpu / f"cpu{cpu}" / "trace_pipe_raw", os.O_RDONLY | os.O_NONBLOCK)
            out = os.open(self.out_dir / f"cpu{cpu}.raw", os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                          0o644)
            stream = CpuStream(cpu, source, out)
            if self.splice_ok:
                stream.pipe_r, stream.pipe_w = os.pipe()
                try:
                    fcntl.fcntl(stream.pipe_w, F_SETPIPE_SZ, SPLICE_CHUNK)
                except OSError:
                    pass  # a smaller pipe only means more splice calls
            self.streams.append(stream)

    @property
    def bytes_written(self) -> int:
        return self.bytes_closed + sum(s.bytes for s in self.streams)

    def pump(self) -> int:
        """Move every full page now available; returns the bytes moved."""
        moved = 0
        for stream in self.streams:
            if self.splice_ok:
                try:
                    moved += self._splice(stream)
                    continue
                except OSError as e:
                    if e.errno not in (errno.EINVAL, errno.ENOSYS):
                        raise
                    self.splice_ok = False  # fall back to page-sized reads
            moved += self._read(stream, limit=256)
        return moved

    def _splice(self, stream: CpuStream) -> int:
        moved = 0
        while True:
            try:
                n = os.splice(stream.source, stream.pipe_w, SPLICE_CHUNK, flags=SPLICE_F_NONBLOCK)
            except BlockingIOError:
                return moved
            if n <= 0:
                return moved
            left = n
            while left:
                left -= os.splice(stream.pipe_r, stream.out, left)
            stream.bytes += n
            moved += n

    def _read(self, stream: CpuStream, limit: int | None = None) -> int:
        """Read pages (full or partial) until the buffer is empty or `limit` pages."""
        chunks = []
        while limit is None or len(chunks) < limit:
            try:
                page = os.read(stream.source, self.page_size)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                raise
            if not page:
                break
            chunks.append(page)
        data = b"".join(chunks)
        if data:
            os.write(stream.out, data)
            stream.bytes += len(data)
        return len(data)

    def wait(self, timeout: float) -> None:
        """Sleep until a ring buffer reaches the instance's buffer_percent, or `timeout`."""
        poller = select.poll()
        for stream in self.streams:
            poller.register(stream.source, select.POLLIN)
        poller.poll(timeout * 1000)

    def drain(self) -> int:
        """After tracing stopped: move full pages, then the partly filled ones."""
        moved = self.pump()
        for stream in self.streams:
            moved += self._read(stream)
        return moved

    def close(self) -> None:
        self.bytes_closed = self.bytes_written
        for stream in self.streams:
            for fd in (stream.source, stream.out, stream.pipe_r, stream.pipe_w):
                if fd is not None:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
        self.streams.clear()


#: while it streams, the collector runs SCHED_FIFO at this priority (like perf record
#: --realtime): on a busy machine a reader that waits for the CPU loses events
REALTIME_PRIORITY = 1


def no_change() -> None:
    pass


def realtime() -> tuple[dict, object]:
    """Make this thread a real-time reader; returns what the manifest records and a
    function that puts the old policy back (decoding must not run real-time)."""
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(REALTIME_PRIORITY))
    except OSError as e:
        return {"realtime": False, "error": e.strerror}, no_change

    def restore():
        try:
            os.sched_setscheduler(0, policy, param)
        except OSError:
            pass
    return {"realtime": True, "policy": "SCHED_FIFO", "priority": REALTIME_PRIORITY}, restore
