"""Host KVM tracepoints: what the hypervisor saw of a guest's end.

Under KVM there is no ``-d int``: the host's kvm:* events are the CPU's witness. A guest
triple fault shows as ``kvm_exit`` with reason ``TRIPLE_FAULT`` (VMX basic exit reason 2) or
``shutdown`` (SVM exit code 0x7f), then ``kvm_userspace_exit`` with ``KVM_EXIT_SHUTDOWN``
(exit reason 8) when KVM hands the shutdown to QEMU. ``kvm_inj_exception`` lines are the
exceptions KVM injected (for instance while emulating a guest's CPL 0 instructions, which is
what a KML process runs). Field columns come from formats/fields.py (``exit_reason``,
``guest_rip``, ``vcpu_id``, ``exit_code``, ``exception``, ``inj_error_code``); where a source
lacks them they are extracted from ``raw`` here.
"""

from __future__ import annotations

import polars as pl

from kmltrace.schema import VECTOR_NAMES

KVM_EVENTS = ("kvm_exit", "kvm_entry", "kvm_inj_exception", "kvm_userspace_exit",
              "kvm_emulate_insn", "kvm_pio", "kvm_msr")
#: kvm_exit reasons that mean the guest CPU shut down (VMX, SVM as KVM prints them)
SHUTDOWN_EXIT_REASONS = ("TRIPLE_FAULT", "shutdown", "SHUTDOWN", "0x7f", "0x0000007f")
KVM_EXIT_SHUTDOWN = 8
VECTOR_OF_NAME = {name: vector for vector, name in VECTOR_NAMES.items()}

_COLUMNS = {
    "vcpu_id": (pl.Int32, r"vcpu (\d+)"),
    "exit_reason": (pl.String, r"reason (\S+)"),
    "guest_rip": (pl.UInt64, r"rip 0x([0-9a-fA-F]+)"),
    "exit_code": (pl.Int32, r"reason \S+ \((-?\d+)\)"),
    "exception": (pl.String, r"^(#?\w+) \(0x"),
    "inj_error_code": (pl.UInt64, r"^#?\w+ \(0x([0-9a-fA-F]+)\)"),
}


def kvm_rows(events: pl.LazyFrame) -> pl.DataFrame:
    """The kvm:* events of `events`, with the kvm field columns present (from raw if needed)."""
    names = set(events.collect_schema().names())
    frame = events.filter(pl.col("event").is_in(KVM_EVENTS))
    fills = []
    for column, (dtype, regex) in _COLUMNS.items():
        from_raw = (pl.col("raw").str.extract(regex, 1) if "raw" in names
                    else pl.lit(None, dtype=pl.String))
        if dtype == pl.UInt64:
            from_raw = from_raw.str.to_integer(base=16, dtype=pl.UInt64, strict=False)
        else:
            from_raw = from_raw.cast(dtype, strict=False)
        fills.append((pl.coalesce(pl.col(column), from_raw) if column in names else from_raw)
                     .alias(column))
    keep = [c for c in ("ts_ns", "seq", "cpu", "pid", "comm", "event", "file", "line", "source")
            if c in names]
    return frame.select(*keep, *fills).collect()


def shutdowns(kvm: pl.DataFrame) -> pl.DataFrame:
    """Rows that show a guest CPU shut down (triple fault): kvm_exit TRIPLE_FAULT/shutdown,
    kvm_userspace_exit KVM_EXIT_SHUTDOWN."""
    return kvm.filter(
        ((pl.col("event") == "kvm_exit") & pl.col("exit_reason").is_in(SHUTDOWN_EXIT_REASONS))
        | ((pl.col("event") == "kvm_userspace_exit")
           & ((pl.col("exit_reason") == "KVM_EXIT_SHUTDOWN")
              | (pl.col("exit_code") == KVM_EXIT_SHUTDOWN))))


def injections(kvm: pl.DataFrame) -> pl.DataFrame:
    """kvm_inj_exception rows with their vector number."""
    rows = kvm.filter(pl.col("event") == "kvm_inj_exception")
    name = pl.col("exception").str.strip_prefix("#")
    return rows.with_columns(
        pl.concat_str(pl.lit("#"), name).replace_strict(VECTOR_OF_NAME, default=None,
                                                         return_dtype=pl.Int32)
        .alias("vector"))


def exit_reason_counts(kvm: pl.DataFrame) -> dict[str, int]:
    """kvm_exit reasons and how often each occurred (the report's view of a KVM host)."""
    exits = kvm.filter(pl.col("event") == "kvm_exit").group_by("exit_reason").len()
    return {r["exit_reason"] or "?": r["len"] for r in exits.sort("len", descending=True)
            .iter_rows(named=True)}
