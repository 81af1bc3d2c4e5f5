"""The field table (formats/fields.py) on events the real samples lack: synthetic lines in
the kernel's own print formats (TP_printk of irq, nmi, signal), labelled as such."""

from __future__ import annotations

import polars as pl

from kmltrace.formats.sniff import parse_file

SYNTHETIC = (
    "# synthetic: print formats of irq:irq_handler_entry/exit, nmi:nmi_handler, "
    "signal:signal_deliver, irq_vectors, exceptions with a %ps symbol\n"
    "          <idle>-0       [001] d.h1. 100.000001: irq_handler_entry: irq=24 name=virtio0-input.0\n"
    "          <idle>-0       [001] d.h1. 100.000002: irq_handler_exit: irq=24 ret=handled\n"
    "          <idle>-0       [001] d.h1. 100.000003: irq_handler_exit: irq=25 ret=unhandled\n"
    "          <idle>-0       [000] d.Z1. 100.000004: nmi_handler: perf_event_nmi_handler() delta_ns: 3049 handled: 1\n"
    "            bash-7       [000] d..1. 100.000005: signal_deliver: sig=17 errno=0 code=1 sa_handler=556bde3fee40 sa_flags=14000000\n"
    "            bash-7       [000] d.h.. 100.000006: reschedule_entry: vector=253\n"
    "            bash-7       [000] d.... 100.000007: page_fault_kernel: address=0xffffc90000000000 ip=0xffffffff81234567 error_code=0x0\n"
    "            bash-7       [000] ..... 100.000008: sched_process_exit: comm=bash pid=7 prio=120 group_dead=false\n"
)


def test_synthetic_fields_of_irq_nmi_signal(tmp_path):
    path = tmp_path / "fields.txt"
    path.write_text(SYNTHETIC)
    parsed = parse_file(path)
    assert parsed.errors == []
    rows = {(r["event"], r["ts_ns"]): r for r in parsed.events.iter_rows(named=True)}
    entry = rows[("irq_handler_entry", 100_000_001_000)]
    assert (entry["system"], entry["irq"], entry["name"]) == ("irq", 24, "virtio0-input.0")
    assert rows[("irq_handler_exit", 100_000_002_000)]["ret_irq"] == 1
    assert rows[("irq_handler_exit", 100_000_003_000)]["ret_irq"] == 0
    nmi = rows[("nmi_handler", 100_000_004_000)]
    assert (nmi["system"], nmi["handler"], nmi["handler_sym"], nmi["delta_ns"], nmi["handled"]) \
        == ("nmi", None, "perf_event_nmi_handler", 3049, 1)
    deliver = rows[("signal_deliver", 100_000_005_000)]
    assert (deliver["sig"], deliver["sa_handler"], deliver["sa_flags"]) == \
        (17, 0x556bde3fee40, 0x14000000)
    assert rows[("reschedule_entry", 100_000_006_000)]["vector"] == 253
    fault = rows[("page_fault_kernel", 100_000_007_000)]
    assert (fault["address"], fault["ip"], fault["ip_sym"]) == \
        (0xffffc90000000000, 0xffffffff81234567, None)
    assert rows[("sched_process_exit", 100_000_008_000)]["group_dead"] is False
    assert parsed.events.schema["ret_irq"] == pl.Int32
    assert parsed.events.schema["sa_handler"] == pl.UInt64
