"""The BTF reader on the running kernel's own BTF (/sys/kernel/btf/vmlinux), and damaged blobs.

Expected offsets come from the x86-64 ABI of ``struct pt_regs`` (arch/x86/include/asm/ptrace.h:
r15, r14, r13, r12, bp, bx, r11, r10, r9, r8, ax, cx, dx, si, di, orig_ax, ip, cs, flags, sp,
ss; eight bytes each), fixed since v2.6.25, not from the code under test.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from kmltrace.collectors.btf import Btf, BtfError
from tests.conftest import require

HOST_BTF = Path("/sys/kernel/btf/vmlinux")


@pytest.fixture(scope="module")
def btf():
    require(HOST_BTF.exists(), f"{HOST_BTF} missing (kernel without CONFIG_DEBUG_INFO_BTF)")
    return Btf(HOST_BTF.read_bytes())


def test_pt_regs_layout(btf):
    assert btf.sizeof("pt_regs") == 21 * 8
    for index, name in ((16, "ip"), (17, "cs"), (18, "flags"), (19, "sp"), (20, "ss"),
                        (0, "r15"), (10, "ax")):
        assert btf.offsetof("pt_regs", name) == 8 * index, name


def test_nested_and_anonymous_members(btf):
    # thread_info is task_struct's first member on x86 (CONFIG_THREAD_INFO_IN_TASK)
    assert btf.offsetof("task_struct", "thread_info.flags") == 0
    thread = btf.offsetof("task_struct", "thread")
    assert btf.offsetof("task_struct", "thread.fsbase") == thread + \
        btf.offsetof("thread_struct", "fsbase")
    assert btf.offsetof("task_struct", "thread.gsbase") == \
        btf.offsetof("task_struct", "thread.fsbase") + 8
    # x86_hw_tss is the first member of tss_struct, sp0 at byte 4 (packed hardware layout)
    assert btf.offsetof("tss_struct", "x86_tss.sp0") == 4
    assert btf.offsetof("tss_struct", "x86_tss.ist") == 36


def test_missing_names(btf):
    with pytest.raises(LookupError):
        btf.offsetof("task_struct", "no_such_member")
    with pytest.raises(LookupError):
        btf.sizeof("no_such_struct")
    assert not btf.has_member("task_struct", "thread.no_such")


def test_damaged_blobs():
    # SYNTHETIC: a header with a wrong magic, and a valid header whose sections run past the end
    with pytest.raises(BtfError, match="magic"):
        Btf(struct.pack("<HBBIIIII", 0x1234, 1, 0, 24, 0, 0, 0, 0))
    with pytest.raises(BtfError, match="truncated"):
        Btf(struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, 100, 100, 10))
    with pytest.raises(BtfError, match="shorter"):
        Btf(b"\x9f\xeb")
