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

from kmltrace.analysis.incidents import Incident, evidence
from kmltrace.output import hexstr
from kmltrace.schema import VECTOR_NAMES

KVM_EVENTS = ("kvm_exit", "kvm_entry", "kvm_inj_exception", "kvm_userspace_exit",
              "kvm_emulate_insn", "kvm_pio", "kvm_msr")
#: kvm_exit reasons that mean the guest CPU shut down (VMX, SVM as KVM prints them)
SHUTDOWN_EXIT_REASONS = ("TRIPLE_FAULT", "shutdown", "SHUTDOWN", "0x7f", "0x0000007f")
KVM_EXIT_SHUTDOWN = 8
VECTOR_OF_NAME = {name: vector for vector, name in VECTOR_NAMES.items()}

_COLUMNS = {
    "vcpu_id": (pl.Int32, r"vcpu (\d+)"),
    "exit_reason": (pl.String, r"reason (.+?)(?:\s+rip 0x| \(-?\d+\)$)"),
    "guest_rip": (pl.UInt64, r"rip 0x([0-9a-fA-F]+)"),
    "exit_code": (pl.Int32, r"reason \S+ \((-?\d+)\)"),
    "exception": (pl.String, r"^(#?\w+) \(0x"),
    "inj_error_code": (pl.UInt64, r"^#?\w+ \(0x([0-9a-fA-F]+)\)"),
    "info1": (pl.UInt64, r"info1? (?:0x)?([0-9a-fA-F]+)"),
    "info2": (pl.UInt64, r"(?:info2 0x|info [0-9a-fA-F]+ )([0-9a-fA-F]+)"),
    "intr_info": (pl.UInt64, r"intr_info 0x([0-9a-fA-F]+)"),
    "exit_error_code": (pl.UInt64, r"intr_info 0x[0-9a-fA-F]+ error_code 0x([0-9a-fA-F]+)"),
    "insn": (pl.String, r"^[0-9a-fA-F]+:[0-9a-fA-F]+:([0-9a-fA-F ]*?) \("),
    "emulate_mode": (pl.String, r"\((\w+)\)"),
}
#: kvm_emulate_insn prints its rip without 0x: "csbase:rip:bytes (mode)"
_EMULATED_RIP = r"^[0-9a-fA-F]+:([0-9a-fA-F]+):"


def kvm_rows(events: pl.LazyFrame) -> pl.DataFrame:
    """The kvm:* events of `events`, with the kvm field columns present (from raw if needed)."""
    names = set(events.collect_schema().names())
    frame = events.filter(pl.col("event").is_in(KVM_EVENTS))
    fills = []
    for column, (dtype, regex) in _COLUMNS.items():
        from_raw = (pl.col("raw").str.extract(regex, 1) if "raw" in names
                    else pl.lit(None, dtype=pl.String))
        if column == "guest_rip" and "raw" in names:
            from_raw = pl.coalesce(from_raw, pl.col("raw").str.extract(_EMULATED_RIP, 1))
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


def exception_exits(kvm: pl.DataFrame) -> pl.DataFrame:
    """kvm_exit rows that are a guest exception, with ``vector``, ``cr2`` and ``error_code``:
    VMX EXCEPTION_NMI (interruption info: valid, type 3 = hardware exception; the exit
    qualification info1 is the #PF address) and SVM "XX excp" (info1 = error code, info2 =
    the #PF address)."""
    exits = kvm.filter(pl.col("event") == "kvm_exit")
    intr = pl.col("intr_info")
    vmx = ((pl.col("exit_reason") == "EXCEPTION_NMI") & ((intr // 0x8000_0000) % 2 == 1)
           & ((intr // 0x100) % 8 == 3))
    svm_name = pl.col("exit_reason").str.extract(r"^(\w\w) excp$", 1)
    vector = (pl.when(vmx).then((intr % 0x100).cast(pl.Int32))
              .otherwise(pl.concat_str(pl.lit("#"), svm_name)
                         .replace_strict(VECTOR_OF_NAME, default=None, return_dtype=pl.Int32)))
    is_vmx = pl.col("exit_reason") == "EXCEPTION_NMI"
    return (exits.with_columns(vector.alias("vector"))
            .filter(pl.col("vector").is_not_null())
            .with_columns(
                pl.when(pl.col("vector") == 14)
                .then(pl.when(is_vmx).then(pl.col("info1")).otherwise(pl.col("info2")))
                .alias("cr2"),
                pl.when(is_vmx & ((intr // 0x800) % 2 == 1)).then(pl.col("exit_error_code"))
                .when(~is_vmx).then(pl.col("info1")).alias("exc_error_code")))


def exit_reason_counts(kvm: pl.DataFrame) -> dict[str, int]:
    """kvm_exit reasons and how often each occurred (the report's view of a KVM host)."""
    exits = kvm.filter(pl.col("event") == "kvm_exit").group_by("exit_reason").len()
    exits = exits.sort(["len", "exit_reason"], descending=[True, False])   # ties by name
    return {r["exit_reason"] or "?": r["len"] for r in exits.iter_rows(named=True)}


def last_emulated(kvm: pl.DataFrame, ts_ns: int | None, pid: int | None) -> dict | None:
    """The last instruction KVM emulated before `ts_ns` in QEMU process `pid`, disassembled
    (capstone) when its bytes are known: ``{"rip", "insn", "mode", "text", "line", "file"}``."""
    rows = kvm.filter(pl.col("event") == "kvm_emulate_insn")
    if ts_ns is not None:
        rows = rows.filter(pl.col("ts_ns") <= ts_ns)
    if pid is not None:
        rows = rows.filter(pl.col("pid") == pid)
    if rows.height == 0:
        return None
    row = rows.tail(1).row(0, named=True)
    return {"rip": row["guest_rip"], "insn": row["insn"], "mode": row["emulate_mode"],
            "text": disassemble(row["insn"], row["guest_rip"], row["emulate_mode"]),
            "line": row.get("line"), "file": row.get("file")}


def disassemble(insn: str | None, rip: int | None, mode: str | None) -> str | None:
    if not insn:
        return None
    try:
        import capstone
        code = bytes.fromhex(insn.replace(" ", ""))
        bits = {"prot64": capstone.CS_MODE_64, "prot32": capstone.CS_MODE_32,
                "prot16": capstone.CS_MODE_16, "real": capstone.CS_MODE_16,
                "vm86": capstone.CS_MODE_16}.get(mode or "prot64", capstone.CS_MODE_64)
        for ins in capstone.Cs(capstone.CS_ARCH_X86, bits).disasm(code, rip or 0):
            return f"{ins.mnemonic} {ins.op_str}".strip()
    except (ImportError, ValueError):
        return None
    return None


# -- chains: a guest CPU shutdown as the host saw it ---------------------------------------

def kvm_episodes(events: pl.LazyFrame, symbolize, result) -> None:
    names = set(events.collect_schema().names())
    if "event" not in names:
        return
    kvm = kvm_rows(events)
    if kvm.height == 0:
        return
    downs = shutdowns(kvm).sort("ts_ns", "seq", nulls_last=True)
    # what the host saw of the guest's exceptions: those KVM injected and those that exited
    cols = ["ts_ns", "seq", "pid", "file", "line", "vector", "cr2", "error_code", "rip"]
    injected = pl.concat([
        injections(kvm).select("ts_ns", "seq", "pid", "file", "line", "vector",
                               pl.lit(None, dtype=pl.UInt64).alias("cr2"),
                               pl.col("inj_error_code").alias("error_code"),
                               pl.lit(None, dtype=pl.UInt64).alias("rip")),
        exception_exits(kvm).select("ts_ns", "seq", "pid", "file", "line", "vector", "cr2",
                                    pl.col("exc_error_code").alias("error_code"),
                                    pl.col("guest_rip").alias("rip")),
    ], how="vertical_relaxed").select(cols).sort("ts_ns", "seq", nulls_last=True)
    last_ts = None
    for row in downs.iter_rows(named=True):
        if last_ts is not None and row["ts_ns"] is not None and row["ts_ns"] - last_ts < 1_000_000:
            continue                 # the kvm_exit and the kvm_userspace_exit of one shutdown
        last_ts = row["ts_ns"]
        before = injected
        if row["ts_ns"] is not None:
            before = injected.filter(pl.col("ts_ns") <= row["ts_ns"])
        if row["pid"] is not None:
            before = before.filter(pl.col("pid") == row["pid"])
        insn = last_emulated(kvm, row["ts_ns"], row["pid"])
        guest_rip = row["guest_rip"] if row["guest_rip"] is not None else (
            insn["rip"] if insn else None)
        chain = [{"vector": r["vector"], "name": VECTOR_NAMES.get(r["vector"]), "cpl": None,
                  "cs": None, "rip": hexstr(r["rip"]), "rsp": None, "cr2": hexstr(r["cr2"]),
                  "error_code": hexstr(r["error_code"]), "stack": None,
                  "symbol": symbolize(r["rip"]), "ts_ns": r["ts_ns"], "source": "kvm",
                  "file": r["file"], "line": r["line"]}
                 for r in before.tail(3).iter_rows(named=True)]
        if insn:
            for e in chain:   # an injected exception of an emulated instruction: that rip
                if e["rip"] is None:
                    e["rip"] = hexstr(insn["rip"])
                    e["symbol"] = symbolize(insn["rip"])
        chain.append({"vector": None, "name": "shutdown", "cpl": None, "cs": None,
                      "rip": hexstr(guest_rip), "rsp": None, "cr2": None,
                      "error_code": None, "stack": None, "symbol": symbolize(guest_rip),
                      "ts_ns": row["ts_ns"],
                      "shutdown": True, "source": "kvm", "file": row["file"],
                      "line": row["line"]})
        result.chains.append(chain)
        what = (f"kvm_exit reason {row['exit_reason']}" if row["event"] == "kvm_exit"
                else f"kvm_userspace_exit {row['exit_reason']}")
        emulated = kvm.filter(pl.col("event") == "kvm_emulate_insn")
        if row["ts_ns"] is not None:
            emulated = emulated.filter(pl.col("ts_ns") <= row["ts_ns"])
        if row["pid"] is not None:
            emulated = emulated.filter(pl.col("pid") == row["pid"])
        result.incidents.append(Incident(
            "triple_fault",
            f"the guest CPU shut down (triple fault) as the host saw it: {what}"
            + (f" at guest rip {hexstr(row['guest_rip'])}" if row["guest_rip"] is not None else "")
            + (f" (QEMU pid {row['pid']})" if row["pid"] is not None else "")
            + (f"; KVM had emulated {emulated.height} guest instructions before it"
               if emulated.height else "")
            + (f", the last `{insn['text'] or insn['insn']}` at {hexstr(insn['rip'])}"
               if insn else ""),
            pid=row["pid"], comm=row["comm"], cpu=row["cpu"], ts_ns=row["ts_ns"],
            evidence=[evidence(row["file"] or "kvm", what, row["line"])]
            + ([evidence(insn["file"] or "kvm", f"kvm_emulate_insn {hexstr(insn['rip'])}: "
                         f"{insn['insn']} ({insn['mode']})", insn["line"])] if insn else []),
            extra={"chain": len(result.chains) - 1, "emulated_instructions": emulated.height}))
