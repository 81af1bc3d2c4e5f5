"""QEMU -d int,cpu_reset logs: real QEMU 7.2 logs of sample_traces/qemu-tiny and public
excerpts of other versions (sample_traces/qemu-public). Expected values come from tiny.S
(RSP = 0x40001000, the push at `starve` = 0x10010e, TSS at 0x105000, IDT at 0x104000) and
from the logs' own text, not from the parser."""

from __future__ import annotations

import polars as pl
import pytest

from kmltrace.formats import qemu_log
from kmltrace.formats.sniff import parse_file
from tests.fuzzing import documents_from
from tests.conftest import SAMPLES

TINY = SAMPLES / "qemu-tiny"
PUBLIC = SAMPLES / "qemu-public"

STACK_TOP = 0x40001000
STARVE = 0x10010E


def _rows(parsed, event):
    return parsed.events.filter(pl.col("event") == event).sort("seq").to_dicts()


def test_starvation_chain_from_a_real_qemu_7_2_log():
    parsed = qemu_log.parse(TINY / "starvation-int.log")
    assert parsed.errors == []
    assert parsed.format == "qemu_log"
    exc = _rows(parsed, "exception")
    assert [e["vector"] for e in exc] == [14, 8]
    pf, df = exc
    assert (pf["cpl"], pf["cs"], pf["ss"]) == (0, 0x08, 0x10)
    assert (pf["ip"], pf["rsp"], pf["cr2"]) == (STARVE, STACK_TOP, STACK_TOP - 8)
    assert pf["address"] == STACK_TOP - 8 and pf["error_code"] == 2   # a write, not present
    assert pf["prev_vector"] is None                                  # check_exception old: 0xffffffff
    assert df["prev_vector"] == 14 and df["error_code"] == 0
    assert df["rax"] == 0x1234                                        # env->regs[R_EAX]= (tiny.S: mov $0x1234)
    # the register dump after each record
    assert pf["idt_base"] == 0x104000 and pf["idt_limit"] == 0xFFF
    assert pf["tr"] == 0x18 and pf["tr_base"] == 0x105000
    assert pf["cr3"] == 0x101000 and pf["efer"] == 0x500 and pf["rip"] == STARVE
    triple = _rows(parsed, "triple_fault")
    assert len(triple) == 1
    assert (triple[0]["vector"], triple[0]["prev_vector"]) == (14, 8)  # check_exception old: 0x8 new 0xe
    assert triple[0]["line"] == 521
    assert pf["line"] == 477 and pf["source"] == "qemu" and pf["ts_ns"] is None
    assert parsed.events["seq"].to_list() == list(range(parsed.events.height))
    # one CPU: every row is CPU 0
    assert parsed.meta["cpus"] == 1 and parsed.events["cpu"].to_list() == [0] * parsed.events.height


def test_cpu_reset_and_hardware_interrupt_records():
    parsed = qemu_log.parse(TINY / "starvation-int.log")
    resets = _rows(parsed, "cpu_reset")
    assert [r["line"] for r in resets] == [1, 29]
    assert resets[1]["cs"] == 0xF000 and resets[1]["ip"] == 0xFFF0   # the reset vector
    hw = _rows(parsed, "hw_interrupt")
    assert [(h["vector"], h["line"]) for h in hw] == [(8, 95)]


def test_in_asm_block_before_the_exception_is_kept():
    parsed = qemu_log.parse(TINY / "starvation-int-inasm.log")
    pf = _rows(parsed, "exception")[0]
    assert pf["in_asm"].startswith("IN:")
    assert "0x0010010e:  50                       pushq    %rax" in pf["in_asm"]
    assert [e["vector"] for e in _rows(parsed, "exception")] == [14, 8]


def test_two_cpus_interleaved():
    parsed = parse_file(TINY / "starvation-smp2.log")
    assert parsed.format == "qemu_log" and parsed.errors == []
    assert parsed.meta["cpus"] == 2
    assert sorted(set(r["cpu"] for r in _rows(parsed, "cpu_reset"))) == [0, 1]
    # the exception lines do not name their CPU on an SMP machine: unknown, not guessed
    assert all(e["cpu"] is None for e in _rows(parsed, "exception"))
    assert [e["vector"] for e in _rows(parsed, "exception")] == [14, 8]


def test_clean_run_has_no_exception():
    parsed = qemu_log.parse(TINY / "clean-int.log")
    assert parsed.errors == []
    assert set(parsed.events["event"]) == {"cpu_reset"}


def test_fault_loop_tail_starting_mid_dump_is_said_and_records_kept():
    parsed = qemu_log.parse(TINY / "fault-loop-tail.log")
    assert len(parsed.errors) == 1
    assert "starts in the middle of a register dump" in str(parsed.errors[0])
    assert parsed.errors[0].line == 1
    exc = _rows(parsed, "exception")
    assert len(exc) == 45                          # grep -c ' v=0e' fault-loop-tail.log
    assert {(e["vector"], e["ip"], e["cr2"]) for e in exc} == {(14, 0x100111, STACK_TOP - 8)}


def test_log_cut_in_the_middle_of_a_register_dump(tmp_path):
    # synthetic cut of a real log: the first 492 lines end inside the #PF record's dump
    lines = (TINY / "starvation-int.log").read_text().splitlines(keepends=True)
    cut = tmp_path / "cut.log"
    cut.write_text("".join(lines[:492]))
    parsed = parse_file(cut)
    assert parsed.format == "qemu_log"
    assert len(parsed.errors) == 1
    err = parsed.errors[0]
    assert "ends in the middle of a register dump of the record at line 477" in str(err)
    assert err.line == 492 and err.path == str(cut)
    pf = _rows(parsed, "exception")[0]
    assert pf["cr2"] == STACK_TOP - 8 and pf["idt_base"] == 0x104000   # IDT= is line 492
    assert pf["cr3"] is None                                           # CR0= line was cut


# the first record of each public excerpt, copied by hand from its quoted log line
PUBLIC_FIRST = {
    "blog_os-798-qemu4.log": dict(vector=14, error_code=2, cpl=0, cs=0x08, ip=0x241626,
                                  ss=0, rsp=0x100000019D0, cr2=0x10000001A70,
                                  rip=0x241626, gdt_base=0x810B),
    "blog_os-770-qemu4.2.log": dict(vector=6, error_code=0, cpl=0, ip=0xC2E4, rsp=0x7AFA,
                                    rax=6, rflags=0x87),
    "osdev-32bit.log": dict(vector=14, error_code=7, cpl=3, cs=0x1B, ip=0x401EBA, ss=0x23,
                            rsp=0x3FEFD4, cr2=2, exc_count=176351),
    "old-eax.log": dict(vector=13, error_code=0xA0F8, cpl=0, ip=0x1F81, rsp=0x106018,
                        rax=0x106000),
    "camplus-int3-then-pf.log": dict(vector=3, soft_int=1, cpl=0, ip=0xFFFF80000020904E,
                                     rsp=0xFFFF800000206FF0, idt_base=0xFFFF800000209460,
                                     cr3=0x202000),
}


@pytest.mark.parametrize("name", sorted(PUBLIC_FIRST))
def test_public_logs_of_other_versions(name):
    parsed = parse_file(PUBLIC / name)
    assert parsed.format == "qemu_log", parsed.errors
    first = _rows(parsed, "exception")[0]
    for key, value in PUBLIC_FIRST[name].items():
        assert first[key] == value, key


def test_public_log_cut_by_its_quote_is_said():
    parsed = parse_file(PUBLIC / "camplus-int3-then-pf.log")
    exc = _rows(parsed, "exception")
    assert [(e["vector"], e["prev_vector"]) for e in exc] == [(3, None), (14, None)]
    assert exc[1]["cr2"] == 0x201008 and exc[1]["address"] == 0x201008
    assert any("ends in the middle of a register dump of the record at line 23" in str(e)
               for e in parsed.errors)


def test_sniff():
    assert qemu_log.sniff((TINY / "starvation-int.log").read_bytes()[:65536])
    assert qemu_log.sniff(b"SMM: enter\nEAX=000000b5 EBX=00007d44\n")
    assert not qemu_log.sniff(b"[    0.000000] Linux version 6.1.0\n")
    assert not qemu_log.sniff(b"# tracer: nop\n#\n")


def test_not_a_qemu_log_is_a_clear_error(tmp_path):
    path = tmp_path / "x.log"
    path.write_text("hello\nworld\n")
    with pytest.raises(Exception) as info:
        qemu_log.parse(path)
    assert "no QEMU -d int/cpu_reset records" in str(info.value)


# -- property: no input makes the parser raise anything but KmltraceError --------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402

from kmltrace.errors import KmltraceError  # noqa: E402

_REAL = (TINY / "starvation-int-inasm.log").read_text().splitlines()[23130:23200]
_docs = documents_from(_REAL, max_lines=40)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_docs)
def test_parse_raises_only_kmltrace_errors(tmp_path, data):
    path = tmp_path / "fuzz.log"
    path.write_bytes(data)
    try:
        parsed = qemu_log.parse(path)
    except KmltraceError:
        return
    assert parsed.events["seq"].to_list() == list(range(parsed.events.height))


def test_protected_mode_hardware_interrupts_keep_their_v_record():
    """Protected mode: "Servicing hardware INT=0x30" then that interrupt's "v=30" record (with
    registers). Both rows are kept, as the landing analysis reads the v= record as an interrupt
    delivery (vector >= 32). In the real Linux tail: grep -c "^Servicing hardware INT" = 45,
    grep -c ": v=" = 107."""
    parsed = qemu_log.parse(SAMPLES / "linux-6.1-double-fault" / "qemu-kml-smp2-tail.log")
    hw = parsed.events.filter(pl.col("event") == "hw_interrupt")
    exc = parsed.events.filter(pl.col("event") == "exception")
    assert hw.height == 45 and exc.height == 107
    serviced = set(hw["line"].to_list())
    records = exc.filter(pl.col("line").is_in([line + 1 for line in serviced]))
    assert records.height == 45 and (records["vector"] >= 32).all()
    assert records["rsp"].null_count() == 0
