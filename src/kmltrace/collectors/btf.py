"""Struct layouts from the kernel's own BTF (the ``.BTF`` section, in memory between
``__start_BTF`` and ``__stop_BTF``; ``/sys/kernel/btf/vmlinux`` on a running kernel).

Only what a snapshot needs without a DWARF vmlinux: a struct's size and the byte offset of a
member path such as ``"thread.fsbase"`` (anonymous struct/union members are searched through).
Format: Documentation/bpf/btf.rst.  One pass over the type records finds where each record
starts and names the structs; members are decoded only for the structs asked about.
"""

from __future__ import annotations

import struct

MAGIC = 0xEB9F
_HEADER = struct.Struct("<HBBIIIII")
_TYPE = struct.Struct("<III")
_MEMBER = struct.Struct("<III")
KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION = 1, 2, 3, 4, 5
KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG = 8, 9, 10, 11, 18
_MODIFIERS = {KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG}


def _extra_bytes(kind: int, vlen: int) -> int:
    """Bytes that follow a type record of `kind` (btf.rst, "Type encoding")."""
    if kind in (1, 14, 17):          # INT, VAR, DECL_TAG
        return 4
    if kind == 3:                    # ARRAY
        return 12
    if kind in (4, 5, 15, 19):       # STRUCT, UNION, DATASEC, ENUM64
        return 12 * vlen
    if kind in (6, 13):              # ENUM, FUNC_PROTO
        return 8 * vlen
    if kind in (2, 7, 8, 9, 10, 11, 12, 16, 18):
        return 0
    raise ValueError(f"unknown BTF kind {kind}")


class BtfError(ValueError):
    pass


class Btf:
    """The types of one BTF blob (vmlinux's: no base BTF)."""

    def __init__(self, data: bytes):
        if len(data) < _HEADER.size:
            raise BtfError("BTF shorter than its header")
        magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = \
            _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise BtfError(f"bad BTF magic {magic:#x}")
        self.data = data
        self.types_at = hdr_len + type_off
        self.strings_at = hdr_len + str_off
        if self.types_at + type_len > len(data) or self.strings_at + str_len > len(data):
            raise BtfError("BTF truncated")
        self.records = [0]           # type id -> byte offset of its record (id 0 is void)
        self.structs: dict[str, int] = {}
        at, end = self.types_at, self.types_at + type_len
        unpack = _TYPE.unpack_from
        while at < end:
            name_off, info, _ = unpack(data, at)
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            if kind in (KIND_STRUCT, KIND_UNION) and name_off:
                self.structs.setdefault(self._string(name_off), len(self.records))
            self.records.append(at)
            at += _TYPE.size + _extra_bytes(kind, vlen)

    def _string(self, offset: int) -> str:
        start = self.strings_at + offset
        return self.data[start:self.data.index(b"\0", start)].decode()

    def _record(self, type_id: int) -> tuple[int, int, int, int, int]:
        """(kind, vlen, kind_flag, size_or_type, record offset) of `type_id`."""
        at = self.records[type_id]
        _, info, size_or_type = _TYPE.unpack_from(self.data, at)
        return (info >> 24) & 0x1F, info & 0xFFFF, info >> 31, size_or_type, at

    def _resolve(self, type_id: int) -> int:
        """`type_id` without typedefs and qualifiers."""
        while True:
            kind, _, _, target, _ = self._record(type_id)
            if kind not in _MODIFIERS:
                return type_id
            type_id = target

    def struct_id(self, name: str) -> int:
        try:
            return self.structs[name]
        except KeyError:
            raise LookupError(f"no struct {name} in BTF") from None

    def sizeof(self, name: str) -> int:
        return self._record(self.struct_id(name))[3]

    def _members(self, type_id: int):
        kind, vlen, kind_flag, _, at = self._record(type_id)
        if kind not in (KIND_STRUCT, KIND_UNION):
            return
        for i in range(vlen):
            name_off, member_type, offset = _MEMBER.unpack_from(self.data, at + 12 + 12 * i)
            bits = offset & 0xFFFFFF if kind_flag else offset
            yield (self._string(name_off) if name_off else ""), member_type, bits

    def _find(self, type_id: int, name: str) -> tuple[int, int] | None:
        """(byte offset, member type id) of `name` in the struct/union `type_id`, looking
        inside anonymous members too."""
        for member, member_type, bits in self._members(self._resolve(type_id)):
            if member == name:
                return bits // 8, member_type
            if not member:
                inner = self._find(member_type, name)
                if inner is not None:
                    return bits // 8 + inner[0], inner[1]
        return None

    def offsetof(self, struct_name: str, path: str) -> int:
        """Byte offset of the member `path` ("thread.fsbase") in ``struct struct_name``."""
        type_id, total = self.struct_id(struct_name), 0
        for name in path.split("."):
            found = self._find(type_id, name)
            if found is None:
                raise LookupError(f"no member {path} in struct {struct_name} (BTF)")
            total += found[0]
            type_id = found[1]
        return total

    def has_member(self, struct_name: str, path: str) -> bool:
        try:
            self.offsetof(struct_name, path)
            return True
        except LookupError:
            return False
