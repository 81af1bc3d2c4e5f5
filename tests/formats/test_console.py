"""Console / dmesg text: real double-fault oopses quoted in public reports
(sample_traces/console-public, sources in PROVENANCE.md). Expected values are read off the
quoted lines themselves."""

from __future__ import annotations

import polars as pl
import pytest

from kmltrace.formats import console
from kmltrace.formats.sniff import parse_file
from tests.fuzzing import documents_from
from tests.conftest import SAMPLES

PUBLIC = SAMPLES / "console-public"


def _rows(parsed, event=None):
    frame = parsed.events if event is None else parsed.events.filter(pl.col("event") == event)
    return frame.sort("seq").to_dicts()


def test_stack_guard_page_double_fault_4_10():
    parsed = parse_file(PUBLIC / "go-audit-30-stack-overflow.txt")
    assert parsed.format == "console" and parsed.errors == []
    assert [r["event"] for r in _rows(parsed)] == ["stack_overflow", "oops"]
    guard, oops = _rows(parsed)
    # "BUG: stack guard page was hit at ffffc900011bbff8 (stack is ffffc900011bc000..ffffc900011bffff)"
    assert guard["address"] == 0xFFFFC900011BBFF8
    assert (guard["stack_lo"], guard["stack_hi"]) == (0xFFFFC900011BC000, 0xFFFFC900011BFFFF)
    assert guard["ts_ns"] == 26_856_596_000 and guard["line"] == 1
    # "kernel stack overflow (double-fault): 0000 [#1] PREEMPT SMP"
    assert oops["vector"] == 8 and oops["error_code"] == 0 and oops["line"] == 2
    for row in (guard, oops):   # the register block belongs to both
        assert (row["cpu"], row["pid"], row["comm"]) == (1, 459, "go-audit")
        assert row["symbol"] == "_raw_spin_lock_irqsave+0x9/0x50"
        assert (row["cs"], row["ss"], row["rsp"]) == (0x10, 0x18, 0xFFFFC900011BC000)


def test_traps_panic_double_fault_and_panic_7_0():
    parsed = parse_file(PUBLIC / "pop-os-4029-double-fault.txt")
    assert parsed.format == "console"
    rows = _rows(parsed)
    assert [r["event"] for r in rows] == ["double_fault", "oops", "panic"]
    df = rows[0]
    assert (df["vector"], df["error_code"], df["ts_ns"]) == (8, 0, None)
    assert (df["cpu"], df["pid"], df["comm"]) == (4, 124, "kswapd0")
    assert df["symbol"] == "sio_ite_8872_probe+0x1fd/0x560 [parport_pc]"
    assert df["rsp"] == 0xBEEF894C
    assert rows[2]["raw"] == "Kernel panic - not syncing: Fatal exception in interrupt"


def test_code_line_and_module_symbol():
    parsed = parse_file(PUBLIC / "open-cas-997-stack-overflow.txt")
    guard = _rows(parsed, "stack_overflow")[0]
    assert guard["line"] == 2 and guard["comm"] == "cas_io_1_69" and guard["cpu"] == 69
    assert guard["code_bytes"].startswith("44 00 00 48 8b 87") and "<e8>" in guard["code_bytes"]
    assert guard["symbol"] == "ocf_metadata_get_core_info+0x2c/0x60 [cas_cache]"


# Hand-written edge cases (synthetic, labelled): forms of lines the public samples lack.
SYNTHETIC = """\
[    0.000000] Linux version 4.0.0-kml (root@host) (gcc 4.9) #1 SMP
[    0.000000] SMEP is not enabled because it is not compatible with Kernel Mode Linux
[    5.100000] BUG: unable to handle page fault for address: 00007ffc1fffeff8
[    5.100001] Oops: 0002 [#1] SMP
[    5.100002] CPU: 0 PID: 77 Comm: \x1b[31mevil Not tainted 4.0.0-kml #1
[    5.100003] RIP: 0010:[<ffffffff81234567>]  [<ffffffff81234567>] do_thing+0x17/0x40
[    5.100004] RSP: 0018:00007ffc1ffff000  EFLAGS: 00010046
[    5.100005] CR2: 00007ffc1fffeff8 CR3: 000000003a0b4000 CR4: 00000000000006f0
[    5.100006] Call Trace:
[    5.100007]  [<ffffffff81200000>] ? stale_word+0x0/0x10
[    5.100008]  [<ffffffff81300000>] caller_fn+0x20/0x80
[    5.100009] ---[ end trace 0123456789abcdef ]---
[    5.100010] Kernel panic - not syncing: Fatal exception
[    5.100011] Kernel Offset: 0x1e000000 from 0xffffffff81000000 (relocation range: 0xffffffff80000000-0xffffffffbfffffff)
[    0.000000] Linux version 4.0.0-kml (root@host) (gcc 4.9) #1 SMP
"""


def test_synthetic_kml_boot_oops_offset_and_second_banner(tmp_path):
    path = tmp_path / "console.txt"
    path.write_text(SYNTHETIC)
    parsed = parse_file(path)
    assert parsed.format == "console"
    events = [r["event"] for r in _rows(parsed)]
    assert events == ["boot", "kml_boot", "oops", "oops", "panic", "kernel_offset", "boot"]
    oops = _rows(parsed, "oops")[1]
    assert oops["error_code"] == 2
    assert oops["ip"] == 0xFFFFFFFF81234567 and oops["symbol"] == "do_thing+0x17/0x40"
    assert oops["cr2"] == 0x7FFC1FFFEFF8 and oops["rsp"] == 0x7FFC1FFFF000
    assert oops["call_trace"] == "caller_fn+0x20/0x80"          # "? " entries left out
    assert oops["comm"] == "\x1b[31mevil"                        # kept as data, escaped on output
    assert _rows(parsed, "kernel_offset")[0]["kaslr_offset"] == 0x1E000000
    assert parsed.meta["kaslr_offset"] == 0x1E000000 and parsed.meta["boots"] == 2
    assert [r["boot_index"] for r in _rows(parsed, "boot")] == [1, 2]


def test_sniff_and_not_console(tmp_path):
    assert console.sniff((PUBLIC / "pop-os-4029-double-fault.txt").read_bytes())
    assert not console.sniff(b"# tracer: nop\n#\n  bash-1  [000] ..... 1.0: sys_enter: NR 1\n")
    path = tmp_path / "plain.txt"
    path.write_text("just some words\nno kernel here\n")
    parsed = parse_file(path)
    assert parsed.format == "unknown" and parsed.errors


def test_real_debian_panic_and_reboot():
    """sample_traces/console-debian-6.1-panic: sysrq-c panic, reboot (panic=1), second boot."""
    parsed = parse_file(SAMPLES / "console-debian-6.1-panic" / "console.txt")
    assert parsed.format == "console" and parsed.errors == []
    assert parsed.meta["kernel"] == "6.1.0-56-amd64" and parsed.meta["boots"] == 2
    rows = _rows(parsed)
    assert [(r["event"], r["line"], r["boot_index"]) for r in rows] == [
        ("boot", 2, 1), ("panic", 356, 1), ("kernel_offset", 391, 1),
        ("boot", 394, 2), ("panic", 750, 2), ("kernel_offset", 789, 2)]
    panic = rows[1]
    assert panic["ts_ns"] == 2_951_936_000
    assert (panic["cpu"], panic["pid"], panic["comm"]) == (0, 81, "busybox")
    # the pt_regs printed are the user's: "RIP: 0033:0x47b7a0", "RSP: 002b:00007ffce66103d8"
    assert (panic["cs"], panic["ip"], panic["ss"], panic["rsp"]) == (0x33, 0x47B7A0, 0x2B,
                                                                     0x7FFCE66103D8)
    trace = panic["call_trace"].splitlines()
    assert trace[:3] == ["dump_stack_lvl+0x44/0x5c", "panic+0x118/0x2f4",
                         "sysrq_handle_crash+0x16/0x20"]
    assert trace[-1] == "entry_SYSCALL_64_after_hwframe+0x6e/0xd8" and len(trace) == 10
    assert [r["kaslr_offset"] for r in rows if r["event"] == "kernel_offset"] == [0x1F800000,
                                                                                0x27400000]


# -- property: no input makes the parser raise anything but KmltraceError --------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402

from kmltrace.errors import KmltraceError  # noqa: E402

_REAL = ((PUBLIC / "go-audit-30-stack-overflow.txt").read_text().splitlines()
         + SYNTHETIC.splitlines())
_docs = documents_from(_REAL, max_lines=30)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_docs)
def test_parse_raises_only_kmltrace_errors(tmp_path, data):
    path = tmp_path / "fuzz.txt"
    path.write_bytes(data)
    try:
        console.parse(path)
    except KmltraceError:
        pass


def test_dmesg_T_wall_clock_prefix(tmp_path):
    # synthetic (labelled): the first lines of the real go-audit oops as `dmesg -T` prints them
    lines = (PUBLIC / "go-audit-30-stack-overflow.txt").read_text().splitlines()
    path = tmp_path / "dmesg-T.txt"
    path.write_text("\n".join("[Fri Nov 29 13:49:29 2024] " + line.split("] ", 1)[1]
                              for line in lines) + "\n")
    parsed = parse_file(path)
    assert parsed.format == "console"
    guard, oops = _rows(parsed)
    assert guard["event"] == "stack_overflow" and guard["ts_ns"] is None
    assert oops["symbol"] == "_raw_spin_lock_irqsave+0x9/0x50" and oops["pid"] == 459


@pytest.mark.parametrize("text, columns", [
    # found by the fuzz test above: an address of 65 bits
    ("BUG: stack guard page was hit at 10000000000000000 (stack is 0..1)", ["address"]),
    ("[99999999999999999999.000000] Oops: 0002 [#1] SMP\n"
     "CPU: 99999999999 PID: 99999999999 Comm: x Not tainted\n"
     "RSP: 0018:1ffffffffffffffff\nCR2: 1ffffffffffffffffff\n"
     "RIP: 0010:[<fffffffffffffffff1>] do_it+0x1/0x2",
     ["ts_ns", "cpu", "pid", "rsp", "cr2", "ip"]),
    ("PANIC: double fault, error_code: 0x1ffffffffffffffffff", ["error_code"]),
    ("Kernel Offset: 0x1ffffffffffffffffff from 0xffffffff81000000", ["kaslr_offset"]),
])
def test_numbers_too_big_for_their_columns_are_left_out(tmp_path, text, columns):
    """SYNTHETIC lines with numbers wider than their columns (64-bit registers, Int32 pids,
    Int64 ns): the row is kept, those numbers are null, the rest is read."""
    path = tmp_path / "console.txt"
    path.write_text(text + "\n")
    events = console.parse(path).events
    assert events.height == 1
    row = events.row(0, named=True)
    assert {c: row[c] for c in columns} == dict.fromkeys(columns)
    if "pid" in columns:
        assert row["error_code"] == 2 and row["symbol"] == "do_it+0x1/0x2"
