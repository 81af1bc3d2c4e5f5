"""The single source of truth for the event table, event names and incident vocabulary.

Every parser returns a frame passed through :func:`conform`, so the core columns of
CONTRACT.md ("The event table") always exist with these dtypes, whatever the source.
"""

from __future__ import annotations

import polars as pl

# -- the event table ---------------------------------------------------------------------------

#: Core columns, in order, with their dtypes (CONTRACT.md).
CORE_COLUMNS: dict[str, pl.DataType] = {
    "ts_ns": pl.Int64,        # null where the source has no time (a QEMU log)
    "seq": pl.Int64,          # order within one source file
    "cpu": pl.Int32,
    "pid": pl.Int32,          # the kernel task id
    "comm": pl.String,
    "source": pl.String,      # ftrace, perf, qemu, kvm, console, snapshot, ...
    "system": pl.String,      # the tracepoint's system: exceptions, raw_syscalls, ...
    "event": pl.String,       # page_fault_user, sys_enter, ..., or exception, triple_fault, ...
    "vector": pl.Int32,
    "ip": pl.UInt64,
    "address": pl.UInt64,
    "error_code": pl.UInt64,
}

#: Where each row came from, so a user can open the original line or byte offset.
PROVENANCE_COLUMNS: dict[str, pl.DataType] = {
    "file": pl.String,
    "line": pl.Int64,         # 1-based line in `file` (text sources)
    "offset": pl.Int64,       # byte offset in `file` (binary sources)
}

#: Columns every table has after the core and provenance ones.
COMMON_COLUMNS: dict[str, pl.DataType] = {
    "tgid": pl.Int32,
    "flags": pl.String,       # ftrace's irq-info flags ("d..1."), when the source has them
    "raw": pl.String,         # the event's field text as printed, kept for every event
}

#: Tracepoint fields that become typed columns, named after the kernel's format files.
FIELD_COLUMNS: dict[str, pl.DataType] = {
    # raw_syscalls
    "id": pl.Int64,
    "args": pl.List(pl.UInt64),
    "ret": pl.Int64,
    # sched
    "prev_comm": pl.String,
    "prev_pid": pl.Int32,
    "prev_prio": pl.Int32,
    "prev_state": pl.String,
    "next_comm": pl.String,
    "next_pid": pl.Int32,
    "next_prio": pl.Int32,
    "filename": pl.String,
    "old_pid": pl.Int32,
    "parent_comm": pl.String,
    "parent_pid": pl.Int32,
    "child_comm": pl.String,
    "child_pid": pl.Int32,
    "prio": pl.Int32,
    "group_dead": pl.Boolean,
    # signal (signal_generate's comm/pid name the target task: target_comm/target_pid here)
    "sig": pl.Int32,
    "errno": pl.Int32,
    "code": pl.Int32,
    "group": pl.Int32,
    "result": pl.Int32,
    "sa_handler": pl.UInt64,
    "sa_flags": pl.UInt64,
    "target_comm": pl.String,
    "target_pid": pl.Int32,
    # irq
    "irq": pl.Int32,
    "name": pl.String,
    "ret_irq": pl.Int32,
    # nmi
    "handler": pl.UInt64,
    "delta_ns": pl.Int64,
    "handled": pl.Int32,
    # ftrace
    "buf": pl.String,
    "parent_ip": pl.UInt64,
    # %ps fields printed as a symbol: the UInt64 column stays null, the text is kept here
    "ip_sym": pl.String,
    "address_sym": pl.String,
    "handler_sym": pl.String,
    "parent_ip_sym": pl.String,
    # the stack trace printed under an event (ftrace stacktrace option, perf callchain)
    "stack": pl.String,
    # lost_events rows: how many events the ring buffer lost there
    "lost": pl.Int64,
    # kvm (host tracepoints, see analysis/kvm.py)
    "vcpu_id": pl.Int32,
    "exit_reason": pl.String,
    "guest_rip": pl.UInt64,
    "exit_code": pl.Int32,
    "exception": pl.String,
    "inj_error_code": pl.UInt64,
    "insn": pl.String,
    "info1": pl.UInt64,
    "info2": pl.UInt64,
    "intr_info": pl.UInt64,
    "exit_error_code": pl.UInt64,
    "emulate_mode": pl.String,
    # register state of exception records (qemu, console, snapshot)
    "cpl": pl.Int32,
    "cs": pl.UInt64,
    "ss": pl.UInt64,
    "rsp": pl.UInt64,
    "cr2": pl.UInt64,
}

ALL_KNOWN_COLUMNS: dict[str, pl.DataType] = {
    **CORE_COLUMNS, **PROVENANCE_COLUMNS, **COMMON_COLUMNS, **FIELD_COLUMNS,
}

# -- event names -------------------------------------------------------------------------------

PAGE_FAULT_USER = "page_fault_user"
PAGE_FAULT_KERNEL = "page_fault_kernel"
PAGE_FAULT_EVENTS = (PAGE_FAULT_USER, PAGE_FAULT_KERNEL)
SYS_ENTER = "sys_enter"
SYS_EXIT = "sys_exit"
SCHED_SWITCH = "sched_switch"
SCHED_PROCESS_EXEC = "sched_process_exec"
SCHED_PROCESS_FORK = "sched_process_fork"
SCHED_PROCESS_EXIT = "sched_process_exit"
# non-tracepoint sources use their own names
EXCEPTION = "exception"          # one exception delivery (qemu log, console)
HW_INTERRUPT = "hw_interrupt"    # "Servicing hardware INT=0x.." (qemu)
TRIPLE_FAULT = "triple_fault"
CPU_RESET = "cpu_reset"
OOPS = "oops"
LOST_EVENTS = "lost_events"      # "CPU:N [LOST n EVENTS]" and ring-buffer missed-events counts

SOURCES = ("ftrace", "perf", "qemu", "kvm", "console", "snapshot")

# x86 exception vectors and their mnemonics
VECTOR_NAMES: dict[int, str] = {
    0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM",
    8: "#DF", 9: "CSO", 10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF",
    17: "#AC", 18: "#MC", 19: "#XM", 20: "#VE", 21: "#CP", 28: "#HV", 29: "#VC", 30: "#SX",
}
PF_VECTOR = 14
DF_VECTOR = 8

# page-fault error_code bits (arch/x86/include/asm/trap_pf.h)
PF_PROT, PF_WRITE, PF_USER, PF_RSVD, PF_INSTR = 1, 2, 4, 8, 16

# -- incidents ---------------------------------------------------------------------------------

SEVERITIES = ("critical", "error", "warning", "info")

#: Incident kinds of CONTRACT.md with their default severity.
INCIDENT_KINDS: dict[str, str] = {
    "triple_fault": "critical",
    "double_fault": "error",         # critical when a reset followed
    "stack_starvation": "error",     # critical if it led to a reset, warning when only predicted
    "redzone_clobber": "error",
    "ist_missing": "error",
    "gs_write": "warning",           # error on an SMP kernel
    "elf32_in_trusted": "error",
    "fault_loop": "critical",
    "oops": "error",                 # critical for a panic
    "fault_storm": "warning",
    "unclean_reset": "critical",
    "kernel_mode_process": "info",
    "syscall_sites": "info",         # audit: a /trusted program enters the kernel by syscall/int 0x80
}

PROCESS_MODES = ("kernel", "user", "kthread", "unknown")


# -- helpers -----------------------------------------------------------------------------------

def dtype_of(column: str) -> pl.DataType | None:
    """The dtype a known column must have, or None for a column of the source's own."""
    return ALL_KNOWN_COLUMNS.get(column)


def conform(frame: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame | pl.LazyFrame:
    """Return `frame` with every core, provenance and common column present and typed.

    Missing columns are added as nulls; known columns are cast (strictly, so a parser bug
    shows); the core columns come first, then provenance, then the rest in their order.
    """
    names = frame.collect_schema().names() if isinstance(frame, pl.LazyFrame) else frame.columns
    present = set(names)
    # a lone literal would make a one-row frame out of an empty one: keep the height
    anchor = names[0] if names else None
    fixed = {**CORE_COLUMNS, **PROVENANCE_COLUMNS, **COMMON_COLUMNS}
    exprs = []
    for name, dtype in fixed.items():
        if name in present:
            exprs.append(pl.col(name).cast(dtype))
        else:
            exprs.append(_null_column(anchor, dtype).alias(name))
    for name in names:
        if name in fixed:
            continue
        dtype = FIELD_COLUMNS.get(name)
        exprs.append(pl.col(name).cast(dtype) if dtype is not None else pl.col(name))
    return frame.select(exprs)


def _null_column(anchor: str | None, dtype: pl.DataType) -> pl.Expr:
    if anchor is None:
        return pl.lit(None, dtype=dtype)
    return pl.repeat(None, pl.len(), dtype=dtype)


def empty_events() -> pl.DataFrame:
    """An event table with no rows and all fixed columns."""
    return pl.DataFrame(schema={**CORE_COLUMNS, **PROVENANCE_COLUMNS, **COMMON_COLUMNS})
