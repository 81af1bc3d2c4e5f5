"""Property tests: no input makes a text parser (or its sniffer) raise anything but
KmltraceError. Inputs are random bytes and mutated real trace lines."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kmltrace.errors import KmltraceError
from kmltrace.formats import Parsed, ftrace_text, perf_script, tracecmd_report

MODULES = [ftrace_text, tracecmd_report, perf_script]

REAL_LINES = [
    "# tracer: nop",
    "cpus=2",
    "version = 6",
    "kmlsamp-dat-1: ",
    "            bash-6058    [001] d....   323.272707: page_fault_user: address=0x556c19643dc8 "
    "ip=0x7f9924bf2aa2 error_code=0x7",
    "            bash-6058    (   6058) [001] .....   323.273762: sys_enter: NR 33 (b, 1, 556bde4959bc, 0, 7, b)",
    "              wl-6061    [000]    323.279419: local_timer_entry: vector=236",
    "CPU:1 [LOST 481 EVENTS]",
    "CPU:1 [12 EVENTS DROPPED]",
    "  stat_file_proc-2848  [002] ....  9731.927346: ext4_file_getattr+0x10/0xbc <-vfs_getattr_nosec+0x68/0x7c",
    " => vfs_statx_fd+0x4c/0x78",
    "            perf  6315 [000]   352.738789:        raw_syscalls:sys_enter: NR 16 (d, 2400, 0, 7fcaf222b5e0, 1, 0)",
    "            perf  6315/6315  [000]   352.738789837:  sched:sched_switch: prev_comm=perf prev_pid=1 "
    "prev_prio=120 prev_state=D ==> next_comm=x next_pid=18 next_prio=0",
    "kmlsamp-dat-17085:          kmlwork-18664 [000]   659.841562: sys_enter:             id=33 "
    "args=ARRAY[0a, 00, 00]",
    "\tffffffff8106f2b1 do_user_addr_fault+0x1f2 ([kernel.kallsyms])",
]

line = st.one_of(
    st.sampled_from(REAL_LINES),
    st.text(alphabet=st.sampled_from(list("[]():-=,.0123456789abcdefx <>/_#NR\t\x1b\\")), max_size=80),
    st.builds(lambda l, i, s: l[:i] + s + l[i:], st.sampled_from(REAL_LINES),
              st.integers(0, 120), st.text(max_size=6)),
    st.builds(lambda l, i: l[:i], st.sampled_from(REAL_LINES), st.integers(0, 120)),
)
documents = st.one_of(
    st.binary(max_size=600),
    st.lists(line, max_size=12).map(lambda ls: "\n".join(ls).encode("utf-8", "surrogatepass")),
    st.builds(lambda ls, end: ("\n".join(ls) + end).encode(), st.lists(line, max_size=12),
              st.sampled_from(["", "\n"])),
)


def _parse_bytes(module, data: bytes):
    fd, name = tempfile.mkstemp(suffix=".txt")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return module.parse(Path(name))
    finally:
        os.unlink(name)


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.NAME)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=documents)
def test_parse_raises_only_kmltrace_errors(module, data):
    try:
        parsed = _parse_bytes(module, data)
    except KmltraceError:
        return
    assert isinstance(parsed, Parsed)
    assert all(isinstance(e, KmltraceError) for e in parsed.errors)
    assert parsed.events.height == 0 or parsed.events["seq"].is_sorted()


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.NAME)
@settings(max_examples=150, deadline=None)
@given(data=documents)
def test_sniff_never_raises(module, data):
    assert module.sniff(data) in (True, False)
