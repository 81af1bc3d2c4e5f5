"""Serial console and dmesg text: oopses, panics, double faults, boots and KML's boot line.

One row per thing a post-mortem needs: ``boot`` (a ``Linux version`` banner; a second one in
the same log is evidence of a reset), ``kml_boot`` (KML's SMEP line), ``double_fault``
(``PANIC: double fault, error_code: 0x..``), ``stack_overflow`` (``BUG: stack guard page was
hit at A (stack is LO..HI)``), ``oops`` (``Oops:``, ``BUG:``, ``general protection fault``,
``kernel stack overflow (double-fault)``, ...), ``panic`` (``Kernel panic - not syncing``),
``kernel_offset`` (the KASLR slide), ``halted`` (``Machine halted.``, ``reboot:``). The
register block that follows an oops (``CPU: n PID: p Comm: c``, ``RIP: 0010:sym+off/len``,
``RSP: 0018:...``, ``CR2:``, ``Code:``, ``Call Trace:``) fills that oops' columns.

Printk timestamps (``[   12.345678]``) become ``ts_ns`` (clock "printk"); lines without one
keep ``ts_ns`` null. Console logs are small: one pass over the lines in Python is enough.
"""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl

from kmltrace.errors import InputError
from kmltrace.formats import Parsed
from kmltrace.schema import DF_VECTOR, OOPS, conform

NAME = "console"

# "[   12.345678] " or "<4>[   12.345678] " or syslog "Jan  1 00:00:00 host kernel: [ 1.2] "
# "dmesg -T" prints "[Fri Nov 29 13:49:23 2024] " instead: wall time, no ts_ns
_PREFIX_RE = re.compile(r"^(?:<\d+>)?(?:[A-Z][a-z]{2} [ \d]\d [\d:]{8} \S+ kernel: )?"
                        r"(?:\[\s*(\d+)\.(\d+)\]\s?"
                        r"|\[[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d [\d:]{8} \d{4}\]\s?)?")
_SNIFF_RE = re.compile(
    rb"^(?:<\d+>)?(?:\[\s*\d+\.\d+\] ?|\[[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d [\d:]{8} \d{4}\] )?"
    rb"(?:Linux version \d|Kernel panic - not syncing|"
    rb"traps: PANIC: double fault|PANIC: double fault|BUG: |Oops: |RIP: 00[0-9a-f]{2}:|"
    rb"kernel stack overflow|Call Trace:|SMEP is not enabled because it is not compatible with "
    rb"Kernel Mode Linux|Kernel Offset: )", re.MULTILINE)
#: dmesg's timestamp at the start of a line: a console log even without the markers above
_DMESG_RE = re.compile(rb"^(?:<\d+>)?\[(?:\s*\d+\.\d{6}|[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d "
                       rb"[\d:]{8} \d{4})\] \S", re.MULTILINE)

_HEADS: list[tuple[str, re.Pattern]] = [
    ("boot", re.compile(r"^Linux version (\S+)")),
    ("kml_boot", re.compile(r"SMEP is not enabled because it is not compatible with Kernel Mode Linux")),
    ("double_fault", re.compile(r"^(?:traps: )?PANIC: double fault, error_code: (0x[0-9a-fA-F]+)")),
    # 4.x-5.x: "BUG: stack guard page was hit at A (stack is LO..HI)"; 6.x names the stack
    # ("BUG: TASK stack guard page ...") and may print "(____ptrval____)" for the addresses
    ("stack_overflow", re.compile(
        r"^BUG: (?:(\w+) )?stack guard page was hit at (\S+) \(stack is (\S+?)\.\.(\S+?)\)")),
    ("panic", re.compile(r"^Kernel panic - not syncing: ?(.*)")),
    ("kernel_offset", re.compile(r"^Kernel Offset: (?:(0x[0-9a-fA-F]+) from (0x[0-9a-fA-F]+)|disabled)")),
    ("halted", re.compile(r"^(?:Machine halted\.|reboot: (?:Restarting system|Power down|System halted))")),
    (OOPS, re.compile(r"^(?:Oops: |kernel stack overflow \(double-fault\)|stack guard page: |"
                      r"BUG: (?!(?:\w+ )?stack guard)|"
                      r"general protection fault|kernel BUG at |Internal error: |"
                      r"unable to handle kernel |stack segment: |invalid opcode: |double fault: )")),
]
_CPU_RE = re.compile(r"^CPU: (\d+) (?:UID: \d+ )?PID: (\d+) Comm: (.{1,16}?) (?:Not tainted|Tainted|Kdump)")
_RIP_RE = re.compile(r"^RIP: ([0-9a-fA-F]{4}):(?:\[<([0-9a-fA-F]+)>\]\s*)?(?:\[<[0-9a-fA-F]+>\]\s*)?(0x[0-9a-fA-F]+|[^\s+]+\+0x[0-9a-fA-F]+/0x[0-9a-fA-F]+(?: \[\S+\])?)")
_RSP_RE = re.compile(r"^RSP: ([0-9a-fA-F]{4}):([0-9a-fA-F]+)")
_CR2_RE = re.compile(r"^CR2: ([0-9a-fA-F]+)")
_ERR_RE = re.compile(r": ([0-9a-fA-F]{4}) \[#\d+\]")
_TRACE_RE = re.compile(r"^\s*(?:\[<[0-9a-fA-F]+>\] )?(\? )?([^\s+]+\+0x[0-9a-fA-F]+/0x[0-9a-fA-F]+)")
_BLOCK_END = re.compile(r"^(?:---\[ end trace|Modules linked in)")


def sniff(head: bytes) -> bool:
    return _SNIFF_RE.search(head) is not None or len(_DMESG_RE.findall(head[:8192])) >= 3


def _num(text: str | None) -> int | None:
    """A hex number of at most 64 bits (a register, an address), else None."""
    if text is None:
        return None
    try:
        value = int(text, 16)
    except ValueError:
        return None
    return value if value < 1 << 64 else None


def _small(text: str) -> int | None:
    """A decimal CPU or pid that fits its Int32 column, else None."""
    value = int(text)
    return value if value < 1 << 31 else None


def parse(path: Path) -> Parsed:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror or e}", path=str(path)) from None
    rows, meta = parse_text(data.decode("utf-8", "replace"), str(path))
    if not rows and not sniff(data[:65536]):
        raise InputError("no kernel console lines (no printk timestamps, banner, oops or panic)",
                         path=str(path), line=1)
    events = conform(pl.from_dicts(rows, schema=_SCHEMA) if rows else pl.DataFrame(schema=_SCHEMA))
    return Parsed(path=str(path), format=NAME, events=events, errors=[], meta=meta)


_SCHEMA = {
    "ts_ns": pl.Int64, "seq": pl.Int64, "cpu": pl.Int32, "pid": pl.Int32, "comm": pl.String,
    "source": pl.String, "system": pl.String, "event": pl.String, "vector": pl.Int32,
    "ip": pl.UInt64, "address": pl.UInt64, "error_code": pl.UInt64, "file": pl.String,
    "line": pl.Int64, "raw": pl.String, "cs": pl.UInt64, "ss": pl.UInt64, "rsp": pl.UInt64,
    "cr2": pl.UInt64, "symbol": pl.String, "stack_lo": pl.UInt64, "stack_hi": pl.UInt64,
    "kaslr_offset": pl.UInt64, "kernel_release": pl.String, "code_bytes": pl.String,
    "call_trace": pl.String, "boot_index": pl.Int32, "stack_type": pl.String,
}


def parse_text(text: str, file: str) -> tuple[list[dict], dict]:
    rows: list[dict] = []
    meta: dict = {"clock": "printk"}
    current: dict | None = None        # the oops (or double fault) whose register block follows
    trace: list[str] | None = None
    boots = 0
    for number, raw_line in enumerate(text.splitlines(), 1):
        match = _PREFIX_RE.match(raw_line)
        body = raw_line[match.end():]
        ts_ns = None
        if match.group(1) is not None:
            frac = match.group(2)
            ts_ns = int(match.group(1)) * 1_000_000_000 + int(frac.ljust(9, "0")[:9])
            if ts_ns >= 1 << 63:                    # no printk clock runs that long
                ts_ns = None
        if trace is not None:
            step = _TRACE_RE.match(body)
            if step and body[:1] == " ":
                if not step.group(1):               # "? sym" entries are stale stack words
                    trace.append(step.group(2))
                continue
            if body.strip() in ("<TASK>", "</TASK>", "<IRQ>", "</IRQ>", "<NMI>", "</NMI>"):
                continue
            current["call_trace"] = "\n".join(trace)
            trace = None
        head = _head(body)
        if head is not None:
            kind, m = head
            if kind == "boot":
                boots += 1
            # boot_index: which boot of this log the row belongs to (0: before any banner),
            # so that an oops meets its own boot's KASLR offset
            row = {"ts_ns": ts_ns, "event": kind, "line": number, "raw": body, "source": "console",
                   "system": "console", "file": file, "boot_index": boots}
            if kind == "boot":
                row["kernel_release"] = m.group(1)
                meta.setdefault("kernel", m.group(1))
            elif kind == "double_fault":
                row["vector"] = DF_VECTOR
                row["error_code"] = _num(m.group(1))
            elif kind == "stack_overflow":
                row["stack_type"] = m.group(1)
                row["address"] = _num(m.group(2))
                row["stack_lo"], row["stack_hi"] = _num(m.group(3)), _num(m.group(4))
            elif kind == "kernel_offset":
                row["kaslr_offset"] = _num(m.group(1)) if m.group(1) else 0
                meta["kaslr_offset"] = row["kaslr_offset"]
            elif kind == OOPS:
                err = _ERR_RE.search(body)
                row["error_code"] = _num(err.group(1)) if err else None
                if body.startswith(("kernel stack overflow (double-fault)", "Oops: double fault",
                                    "double fault:", "stack guard page:")):
                    row["vector"] = DF_VECTOR
            rows.append(row)
            if kind in (OOPS, "double_fault", "stack_overflow"):
                current = row
            elif kind == "panic" and (current is None or current["line"] < number - 40):
                current = row          # a panic without an oops (sysrq c, BUG_ON) owns its block
            elif kind in ("boot", "halted"):
                current = None
            continue
        if current is None:
            continue
        if _BLOCK_END.match(body):
            continue
        if (m := _CPU_RE.match(body)) is not None:
            _fill(current, rows, cpu=_small(m.group(1)), pid=_small(m.group(2)), comm=m.group(3))
        elif (m := _RIP_RE.match(body)) is not None:
            where = m.group(3)
            ip = _num(m.group(2)) or (_num(where) if where.startswith("0x") else None)
            _fill(current, rows, cs=_num(m.group(1)), ip=ip,
                  symbol=None if where.startswith("0x") else where)
        elif (m := _RSP_RE.match(body)) is not None:
            _fill(current, rows, ss=_num(m.group(1)), rsp=_num(m.group(2)))
        elif (m := _CR2_RE.match(body)) is not None:
            _fill(current, rows, cr2=_num(m.group(1)))
        elif body.startswith("Code: "):
            _fill(current, rows, code_bytes=body[6:])
        elif body.startswith("Call Trace:"):
            trace = []
    if trace is not None and current is not None:
        current["call_trace"] = "\n".join(trace)
    for seq, row in enumerate(rows):
        row["seq"] = seq
    if boots > 1:
        meta["boots"] = boots
    return rows, meta


def _head(body: str):
    for kind, regex in _HEADS:
        m = regex.search(body) if kind == "kml_boot" else regex.match(body)
        if m:
            return kind, m
    return None


def _fill(current: dict, rows: list[dict], **values) -> None:
    """Register lines belong to the oops being printed; a double fault's ``PANIC:`` line and
    the ``Oops: double fault`` after it (and the guard-page BUG and its oops) share them."""
    targets = [current]
    for row in reversed(rows):
        if row is current:
            continue
        if row["event"] in ("double_fault", "stack_overflow", OOPS) and \
                row["line"] >= current["line"] - 3:
            targets.append(row)
        break
    for row in targets:
        for key, value in values.items():
            if value is not None and row.get(key) is None:
                row[key] = value
