"""Parse the kernel's event description texts: `format` files, `header_page`, `header_event`.

These texts (tracefs ``events/<system>/<event>/format`` and ``events/header_*``, stored verbatim
in trace.dat) say where every field of a binary event record lives. Nothing here decodes
events; :mod:`kmltrace.formats.ringbuffer` does, from what these parsers return.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from kmltrace.errors import InputError

# `field:unsigned long args[6];	offset:16;	size:48;	signed:0;` (signed: is missing on
# very old kernels)
_FIELD_RE = re.compile(
    r"^\s*field:\s*(?P<decl>[^;]*);\s*offset:\s*(?P<offset>\d+);\s*size:\s*(?P<size>\d+);"
    r"(?:\s*signed:\s*(?P<signed>\d+);)?")
_DECL_RE = re.compile(r"^(?P<type>.*?)\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*"
                      r"(?:\[(?P<len>[^\]]*)\])?\s*(?::\s*\d+)?$")
_CHAR_TYPES = {"char", "signed char", "unsigned char", "u8", "s8", "__u8", "__s8"}
# the element size of dynamic (__data_loc) arrays, which the format does not state
_ELEMENT_SIZES = {
    "char": 1, "signed char": 1, "unsigned char": 1, "u8": 1, "s8": 1, "__u8": 1, "__s8": 1,
    "bool": 1, "short": 2, "unsigned short": 2, "u16": 2, "s16": 2, "__u16": 2,
    "int": 4, "unsigned int": 4, "unsigned": 4, "u32": 4, "s32": 4, "__u32": 4, "pid_t": 4,
    "long long": 8, "unsigned long long": 8, "u64": 8, "s64": 8, "__u64": 8,
}


@dataclass(frozen=True)
class Field:
    """One field of an event record, at `offset` from the start of the record's data."""

    name: str
    type: str            # the C type as written, without the array suffix
    offset: int
    size: int            # bytes in the record (4 for a __data_loc/__rel_loc descriptor)
    signed: bool
    array_len: int | None = None   # [N] -> N, [] -> 0 (flexible, runs to the record's end)
    data_loc: bool = False         # __data_loc: u32 (length << 16 | offset from record start)
    rel_loc: bool = False          # __rel_loc: same, offset from the end of this field
    element_size: int = 0

    @property
    def is_string(self) -> bool:
        """A char array: printed and stored as a string, cut at the first NUL."""
        return self.type in _CHAR_TYPES and (self.array_len is not None or self.dynamic)

    @property
    def dynamic(self) -> bool:
        return self.data_loc or self.rel_loc

    @property
    def is_common(self) -> bool:
        return self.name.startswith("common_")


@dataclass
class EventFormat:
    """One event type: its numeric id (the record's common_type), names and fields."""

    id: int
    system: str
    name: str
    fields: list[Field] = field(default_factory=list)
    print_fmt: str = ""

    def field(self, name: str) -> Field | None:
        for f in self.fields:
            if f.name == name:
                return f
        return None

    @property
    def own_fields(self) -> list[Field]:
        """The event's fields without the common_* header ones."""
        return [f for f in self.fields if not f.is_common]

    @property
    def fixed_size(self) -> int:
        """Bytes of the record covered by fixed fields (the minimum record length)."""
        return max((f.offset + f.size for f in self.fields), default=0)


def _parse_field(line: str, long_size: int) -> Field | None:
    m = _FIELD_RE.match(line)
    if not m:
        return None
    decl = m["decl"].strip()
    offset, size = int(m["offset"]), int(m["size"])
    data_loc = decl.startswith("__data_loc")
    rel_loc = decl.startswith("__rel_loc")
    if data_loc or rel_loc:
        decl = decl.split(None, 1)[1] if " " in decl else ""
        # "char[] name" -> type "char", name "name"
        parts = decl.rsplit(None, 1)
        if len(parts) != 2:
            return None
        ctype, name = parts[0].replace("[]", "").strip(), parts[1]
        elem = _ELEMENT_SIZES.get(ctype, long_size if "long" in ctype else 1)
        return Field(name=name, type=ctype, offset=offset, size=size,
                     signed=m["signed"] == "1", array_len=0, data_loc=data_loc,
                     rel_loc=rel_loc, element_size=elem)
    d = _DECL_RE.match(decl)
    if not d:
        return None
    ctype = " ".join(d["type"].split())
    array_len = None
    elem = size
    if d["len"] is not None:
        if d["len"].strip() == "":
            array_len = 0
            elem = _ELEMENT_SIZES.get(ctype, 1)
        else:
            # the length may be an expression (TASK_COMM_LEN); the size is authoritative
            elem = _ELEMENT_SIZES.get(ctype, long_size if "long" in ctype else 0)
            if not elem:
                try:
                    elem = size // int(d["len"], 0)
                except (ValueError, ZeroDivisionError):
                    elem = 1
            array_len = size // elem if elem else size
    return Field(name=d["name"], type=ctype, offset=offset, size=size,
                 signed=m["signed"] == "1", array_len=array_len, element_size=elem)


def parse_format(text: str, system: str | None = None, path: str | None = None,
                 long_size: int = 8) -> EventFormat:
    """Parse one ``format`` file's text; raise InputError (naming `path` and line) if it is not one."""
    name = None
    event_id = None
    fields: list[Field] = []
    print_fmt = ""
    in_format = False
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("name:"):
            name = stripped[5:].strip()
        elif stripped.startswith("ID:"):
            try:
                event_id = int(stripped[3:].strip())
            except ValueError:
                raise InputError(f"event format: bad ID {stripped[3:].strip()!r}",
                                 path=path, line=lineno) from None
        elif stripped.startswith("format:"):
            in_format = True
        elif stripped.startswith("print fmt:"):
            print_fmt = stripped[len("print fmt:"):].strip()
            in_format = False
        elif in_format and stripped.startswith("field:"):
            f = _parse_field(stripped, long_size)
            if f is None:
                raise InputError(f"event format: cannot parse field {stripped[:80]!r}",
                                 path=path, line=lineno)
            fields.append(f)
    if name is None or event_id is None or not fields:
        missing = "name" if name is None else "ID" if event_id is None else "fields"
        raise InputError(f"not an event format file (no {missing})", path=path, line=1)
    return EventFormat(id=event_id, system=system or "", name=name, fields=fields,
                       print_fmt=print_fmt)


@dataclass(frozen=True)
class PageHeader:
    """Layout of a ring-buffer page header (tracefs ``events/header_page``)."""

    timestamp_offset: int = 0
    timestamp_size: int = 8
    commit_offset: int = 8
    commit_size: int = 8        # the kernel's long size (local_t)
    data_offset: int = 16
    data_size: int = 4080       # the page's data area (page size - data_offset)

    @property
    def page_size(self) -> int:
        return self.data_offset + self.data_size


def parse_header_page(text: str, path: str | None = None) -> PageHeader:
    """Parse ``header_page``: where the page timestamp, commit word and data start."""
    found: dict[str, Field] = {}
    for line in text.splitlines():
        f = _parse_field(line.strip(), 8)
        if f is not None:
            found.setdefault(f.name, f)
    missing = [n for n in ("timestamp", "commit", "data") if n not in found]
    if missing:
        raise InputError(f"header_page lacks the field(s) {', '.join(missing)}", path=path, line=1)
    ts, commit, data = found["timestamp"], found["commit"], found["data"]
    if ts.size != 8 or commit.size not in (4, 8) or data.size <= 0 or data.size % 4:
        raise InputError(f"header_page has an unsupported layout (timestamp size {ts.size}, "
                         f"commit size {commit.size}, data size {data.size})", path=path, line=1)
    return PageHeader(timestamp_offset=ts.offset, timestamp_size=ts.size,
                      commit_offset=commit.offset, commit_size=commit.size,
                      data_offset=data.offset, data_size=data.size)


@dataclass(frozen=True)
class EventHeader:
    """The compressed event header (``header_event``): type_len codes of the special records."""

    type_len_bits: int = 5
    time_delta_bits: int = 27
    padding: int = 29
    time_extend: int = 30
    time_stamp: int = 31
    data_max_type_len: int = 28


def parse_header_event(text: str, path: str | None = None) -> EventHeader:
    """Parse ``header_event``; refuse a layout other than the 5/27-bit one every kernel uses."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        m = re.match(r"^\s*(\w[\w ]*?)\s*:\s*(\d+)\s*bits", line)
        if m:
            values[m[1].strip()] = int(m[2])
            continue
        m = re.match(r"^\s*(\w[\w ]*?)\s*:\s*type\s*==\s*(\d+)", line)
        if m:
            values[m[1].strip()] = int(m[2])
            continue
        m = re.match(r"^\s*data max type_len\s*==\s*(\d+)", line)
        if m:
            values["data_max_type_len"] = int(m[1])
    header = EventHeader(
        type_len_bits=values.get("type_len", 5), time_delta_bits=values.get("time_delta", 27),
        padding=values.get("padding", 29), time_extend=values.get("time_extend", 30),
        time_stamp=values.get("time_stamp", 31),
        data_max_type_len=values.get("data_max_type_len", 28))
    if "type_len" not in values or "time_delta" not in values:
        raise InputError("not a header_event text (no type_len/time_delta)", path=path, line=1)
    if header != EventHeader():
        raise InputError(f"unsupported ring-buffer event header {header}", path=path, line=1)
    return header


class FormatTable(Mapping):
    """Event formats by id, each parsed when first used: a trace.dat carries thousands and a
    capture uses a handful. A format that does not parse raises InputError on access, naming
    where its text came from (a file and line, or the trace.dat offset)."""

    _ID_RE = re.compile(r"^\s*ID:\s*(\d+)\s*$", re.M)

    def __init__(self, long_size: int = 8):
        self.long_size = long_size
        self._texts: dict[int, tuple[str, str, str | None, int | None]] = {}
        self._parsed: dict[int, EventFormat] = {}

    def add(self, text: str, system: str, path: str | None = None,
            offset: int | None = None) -> None:
        m = self._ID_RE.search(text)
        if not m:
            raise InputError(f"{system}: not an event format (no ID)", path=path,
                             offset=offset, line=None if offset is not None else 1)
        self._texts[int(m[1])] = (text, system, path, offset)

    def __getitem__(self, event_id: int) -> EventFormat:
        found = self._parsed.get(event_id)
        if found is not None:
            return found
        text, system, path, offset = self._texts[event_id]
        try:
            fmt = parse_format(text, system=system, path=path, long_size=self.long_size)
        except InputError as e:
            if offset is None:
                raise
            raise InputError(f"{system}: {e.message} (line {e.line} of the format)",
                             path=path, offset=offset) from None
        self._parsed[event_id] = fmt
        return fmt

    def __iter__(self):
        return iter(self._texts)

    def __len__(self) -> int:
        return len(self._texts)

    def __contains__(self, event_id) -> bool:
        return event_id in self._texts
