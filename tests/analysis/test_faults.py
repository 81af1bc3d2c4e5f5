"""Per-process fault sequences: classes from the memory map, growth, repeats (SYNTHETIC)."""


from kmltrace.analysis.context import Context
from kmltrace.analysis.faults import activity_counts, classified_faults, fault_summary
from tests.analysis.synthetic import US, capture, frame, stack_maps


def _rows():
    rows = []
    # 5 stack pages touched top-down (each a new lowest page), then the top one again
    pages = [0x7ffd4000 - 0x1000 * i for i in range(5)] + [0x7ffd4000]
    for i, page in enumerate(pages):
        rows.append({"ts_ns": (1 + i) * US, "cpu": 0, "pid": 100, "event": "page_fault_user",
                     "address": page + 8, "ip": 0x401000, "error_code": 6})
    # 2 heap faults, 1 file-backed (text), 1 kernel address, 1 outside every map
    for i, addr in enumerate([0x55550010, 0x55551010, 0x400100, 0xffffffff81000000, 0x10]):
        rows.append({"ts_ns": (10 + i) * US, "cpu": 0, "pid": 100, "event": "page_fault_user",
                     "address": addr, "ip": 0x401000, "error_code": 6})
    rows.append({"ts_ns": 20 * US, "cpu": 0, "pid": 100, "event": "sys_enter", "id": 110})
    rows.append({"ts_ns": 21 * US, "cpu": 0, "pid": 100, "event": "sys_enter", "id": 110})
    rows.append({"ts_ns": 22 * US, "cpu": 0, "pid": 100, "event": "local_timer_entry",
                 "system": "irq_vectors", "vector": 236})
    rows.append({"ts_ns": 23 * US, "cpu": 0, "pid": 100, "event": "signal_deliver", "sig": 11})
    return frame(rows)


def test_fault_classes_growth_and_repeats():
    ctx = Context.build(capture(_rows(), processes=[stack_maps(exe="/usr/bin/prog")]))
    faults = classified_faults(ctx).collect()
    counts = dict(faults.group_by("klass").len().iter_rows())
    assert counts == {"stack": 6, "heap": 2, "file": 1, "kernel": 1, "unknown": 1}
    row = fault_summary(ctx).row(0, named=True)
    assert row["faults"] == 11
    assert row["stack_growth"] == 5            # the 6th stack fault is not a new lowest page
    assert row["repeated_addresses"] == 1 and row["max_repeats_at_one_address"] == 2


def test_syscalls_interrupts_and_signals_per_process():
    ctx = Context.build(capture(_rows()))
    activity = activity_counts(ctx)[(100, 0)]
    assert activity["syscalls_by_id"] == {"110": 2}
    assert activity["interrupts"] == {"local_timer_entry": 1}
    assert activity["signals"] == {"signal_deliver sig 11": 1}


def test_snapshot_stack_vma_and_saved_sp_classify_stack_faults():
    rows = frame([
        {"ts_ns": 1 * US, "cpu": 0, "pid": 7, "event": "page_fault_user",
         "address": 0x7ff0_0000_1000, "error_code": 2},        # inside the stack VMA
        {"ts_ns": 2 * US, "cpu": 0, "pid": 8, "event": "page_fault_user",
         "address": 0x40000ff8, "error_code": 2},              # 8 bytes below saved sp
        {"ts_ns": 3 * US, "cpu": 0, "pid": 8, "event": "page_fault_user",
         "address": 0x20000000, "error_code": 2},              # far from it
    ])
    snap = {"tasks": [{"pid": 7, "stack_vma": ["0x7ff000000000", "0x7ff000010000"]},
                      {"pid": 8, "sp": "0x40001000"}]}
    ctx = Context.build(capture(rows, meta={"snapshot": snap}))
    klass = classified_faults(ctx).sort("row").collect().get_column("klass").to_list()
    assert klass == ["stack", "stack", "unknown"]
