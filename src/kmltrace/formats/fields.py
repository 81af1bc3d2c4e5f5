"""Tracepoint field text -> typed columns, one table shared by every text parser.

Each :class:`EventFields` names the events it covers, a regex over the event's printed field
text (``raw``) whose named groups are the kernel's own format field names, and how each group
becomes a value. Adding an event (kvm, ...) is one more entry in :data:`EVENT_FIELDS`.

Kinds of values:
  ``int``    decimal                       -> the column's dtype of schema.FIELD_COLUMNS
  ``hex``    ``0x7`` or ``7`` (``%lx``)     -> UInt64
  ``ps``     a ``%ps`` pointer: ``0x...`` goes to the UInt64 column; a symbol
             (``do_user_addr_fault+0x1f2/0x5c0``) leaves it null and is kept in ``<name>_sym``
  ``hexlist`` ``b, 1, 556bde4959bc, ...``  -> List(UInt64) (sys_enter's six arguments)
  ``le_u64_bytes`` ``0a, 00, ...`` (``trace-cmd report -R`` arrays) -> List(UInt64)
  ``str``    text as printed
  ``handled`` irq_handler_exit's ``handled``/``unhandled`` -> 1/0
  ``bool``   ``true``/``false`` (or 1/0)
  ``hexdec`` ``0x21 (33)``: a boot-mapped instance's preserved text (previous boot) prints
             every number so; 64-bit columns take the hex part (the decimal is truncated to
             32 bits: ``ip=0xffffffff9b07e171 (-1693982351)``), narrower ones the decimal
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import polars as pl

from kmltrace.schema import CORE_COLUMNS, FIELD_COLUMNS


@dataclass(frozen=True)
class EventFields:
    system: str
    events: tuple[str, ...]
    pattern: str
    kinds: dict[str, str]
    #: the C scanner's decoder for this entry's canonical field text (formats/_textscan.c);
    #: the rows it decodes skip the regex, the others go through it
    fast: str | None = None


_IRQ_VECTOR_EVENTS = tuple(
    f"{name}_{end}"
    for name in ("local_timer", "reschedule", "call_function", "call_function_single",
                 "irq_work", "spurious_apic", "error_apic", "x86_platform_ipi",
                 "thermal_apic", "deferred_error_apic", "threshold_apic")
    for end in ("entry", "exit")
)

#: one number as the preserved text of a previous boot prints it: ``0x12 (18)``
_HD = r"0x[0-9a-fA-F]+ \(-?\d+\)"

#: The table: event name(s) -> how their field text becomes columns.
EVENT_FIELDS: tuple[EventFields, ...] = (
    # A boot-mapped instance's previous boot (6.12 ``trace`` of a persistent instance): fields
    # print as "name=0x21 (33)", sys_enter's args as "<INVALID-SIZE>", comms as "<...>".
    # First in the table: "vector=0xec (236)" would otherwise read as vector 0 below.
    EventFields("exceptions", ("page_fault_user", "page_fault_kernel"),
                r"address=(?P<address>0x[0-9a-fA-F]+) \(-?\d+\) ip=(?P<ip>0x[0-9a-fA-F]+) "
                r"\(-?\d+\) error_code=(?P<error_code>0x[0-9a-fA-F]+)",
                {"address": "ps", "ip": "ps", "error_code": "hex"}),
    EventFields("irq_vectors", _IRQ_VECTOR_EVENTS, rf"^vector=(?P<vector>{_HD})",
                {"vector": "hexdec"}),
    EventFields("raw_syscalls", ("sys_enter",), rf"^id=(?P<id>{_HD}) args=", {"id": "hexdec"}),
    EventFields("raw_syscalls", ("sys_exit",), rf"^id=(?P<id>{_HD}) ret=(?P<ret>{_HD})",
                {"id": "hexdec", "ret": "hexdec"}),
    EventFields("sched", ("sched_switch",),
                rf"prev_comm=(?P<prev_comm>.*) prev_pid=(?P<prev_pid>{_HD}) prev_prio="
                rf"(?P<prev_prio>{_HD}) prev_state=(?P<prev_state>0x[0-9a-fA-F]+) \(-?\d+\) "
                rf"next_comm=(?P<next_comm>.*) next_pid=(?P<next_pid>{_HD}) "
                rf"next_prio=(?P<next_prio>{_HD})",
                {"prev_comm": "str", "prev_pid": "hexdec", "prev_prio": "hexdec",
                 "prev_state": "str", "next_comm": "str", "next_pid": "hexdec",
                 "next_prio": "hexdec"}),
    EventFields("sched", ("sched_process_exec",),
                rf"filename=(?P<filename>.*) pid={_HD} old_pid=(?P<old_pid>{_HD})",
                {"filename": "str", "old_pid": "hexdec"}),
    EventFields("sched", ("sched_process_fork",),
                rf"parent_comm=(?P<parent_comm>.*) parent_pid=(?P<parent_pid>{_HD})"
                rf" child_comm=(?P<child_comm>.*) child_pid=(?P<child_pid>{_HD})",
                {"parent_comm": "str", "parent_pid": "hexdec", "child_comm": "str",
                 "child_pid": "hexdec"}),
    EventFields("sched", ("sched_process_exit",), rf"comm=.* pid={_HD} prio=(?P<prio>{_HD})",
                {"prio": "hexdec"}),
    EventFields("exceptions", ("page_fault_user", "page_fault_kernel"),
                r"address=(?P<address>\S+) ip=(?P<ip>\S+) error_code=(?P<error_code>\S+)",
                {"address": "ps", "ip": "ps", "error_code": "hex"}, fast="FAULT"),
    EventFields("irq_vectors", _IRQ_VECTOR_EVENTS, r"vector=(?P<vector>\d+)", {"vector": "int"},
                fast="VECTOR"),
    EventFields("irq", ("irq_handler_entry",), r"irq=(?P<irq>-?\d+) name=(?P<name>.*)$",
                {"irq": "int", "name": "str"}),
    EventFields("irq", ("irq_handler_exit",), r"irq=(?P<irq>-?\d+) ret=(?P<ret_irq>\w+)",
                {"irq": "int", "ret_irq": "handled"}),
    # 6.x and 4.x print the same: "NR 110 (0, 0, ...)" with %lx arguments
    EventFields("raw_syscalls", ("sys_enter",), r"NR (?P<id>-?\d+) \((?P<args>[^)]*)\)",
                {"id": "int", "args": "hexlist"}, fast="NR_ARGS"),
    EventFields("raw_syscalls", ("sys_exit",), r"NR (?P<id>-?\d+) = (?P<ret>-?\d+)",
                {"id": "int", "ret": "int"}, fast="NR_RET"),
    # `trace-cmd report -R` prints raw fields as name=value, arrays as little-endian bytes
    EventFields("raw_syscalls", ("sys_enter",), r"^id=(?P<id>-?\d+) args=ARRAY\[(?P<args>[^\]]*)\]",
                {"id": "int", "args": "le_u64_bytes"}),
    EventFields("raw_syscalls", ("sys_exit",), r"^id=(?P<id>-?\d+) ret=(?P<ret>-?\d+)",
                {"id": "int", "ret": "int"}),
    EventFields("sched", ("sched_switch",),
                r"prev_comm=(?P<prev_comm>.*) prev_pid=(?P<prev_pid>-?\d+) prev_prio=(?P<prev_prio>-?\d+)"
                r" prev_state=(?P<prev_state>\S+)(?: ==>)? next_comm=(?P<next_comm>.*)"
                r" next_pid=(?P<next_pid>-?\d+) next_prio=(?P<next_prio>-?\d+)",
                {"prev_comm": "str", "prev_pid": "int", "prev_prio": "int", "prev_state": "str",
                 "next_comm": "str", "next_pid": "int", "next_prio": "int"}),
    # trace-cmd's sched plugin: "kmlwork:22998 [120] R ==> perf:22997 [120]"
    EventFields("sched", ("sched_switch",),
                r"^(?P<prev_comm>.*):(?P<prev_pid>-?\d+) \[(?P<prev_prio>-?\d+)\] (?P<prev_state>\S+)"
                r" ==> (?P<next_comm>.*):(?P<next_pid>-?\d+) \[(?P<next_prio>-?\d+)\]",
                {"prev_comm": "str", "prev_pid": "int", "prev_prio": "int", "prev_state": "str",
                 "next_comm": "str", "next_pid": "int", "next_prio": "int"}),
    # the task's own comm/pid fields repeat common_pid: only the others become columns
    EventFields("sched", ("sched_process_exec",),
                r"filename=(?P<filename>.*) pid=\d+ old_pid=(?P<old_pid>-?\d+)",
                {"filename": "str", "old_pid": "int"}),
    EventFields("sched", ("sched_process_fork",),
                r"(?:parent_)?comm=(?P<parent_comm>.*) (?:parent_)?pid=(?P<parent_pid>-?\d+)"
                r" child_comm=(?P<child_comm>.*)"
                r" child_pid=(?P<child_pid>-?\d+)",
                {"parent_comm": "str", "parent_pid": "int", "child_comm": "str", "child_pid": "int"}),
    EventFields("sched", ("sched_process_exit",),
                r"comm=.* pid=-?\d+ prio=(?P<prio>-?\d+)(?: group_dead=(?P<group_dead>\w+))?",
                {"prio": "int", "group_dead": "bool"}),
    # signal_generate's comm/pid are the signal's target task, not the current one
    EventFields("signal", ("signal_generate",),
                r"sig=(?P<sig>-?\d+) errno=(?P<errno>-?\d+) code=(?P<code>-?\d+) comm=(?P<target_comm>.*)"
                r" pid=(?P<target_pid>-?\d+) (?:grp|group)=(?P<group>-?\d+) (?:res|result)=(?P<result>-?\d+)",
                {"sig": "int", "errno": "int", "code": "int", "target_comm": "str",
                 "target_pid": "int", "group": "int", "result": "int"}),
    EventFields("signal", ("signal_deliver",),
                r"sig=(?P<sig>-?\d+) errno=(?P<errno>-?\d+) code=(?P<code>-?\d+)"
                r" sa_handler=(?P<sa_handler>[0-9a-fA-Fx]+) sa_flags=(?P<sa_flags>[0-9a-fA-Fx]+)",
                {"sig": "int", "errno": "int", "code": "int", "sa_handler": "hex", "sa_flags": "hex"}),
    EventFields("nmi", ("nmi_handler",),
                r"^handler=(?P<handler>\S+) delta_ns=(?P<delta_ns>-?\d+) handled=(?P<handled>-?\d+)",
                {"handler": "ps", "delta_ns": "int", "handled": "int"}),
    EventFields("nmi", ("nmi_handler",),
                r"(?P<handler>\S+?)\(\) delta_ns: (?P<delta_ns>-?\d+) handled: (?P<handled>-?\d+)",
                {"handler": "ps", "delta_ns": "int", "handled": "int"}),
    # kvm (host side of a VM): analysis/kvm.py reads these. kvm_exit prints "reason X rip 0x.."
    # (4.x: "... info A B"; 5.x+: "vcpu N reason X rip 0x.. info1 .. intr_info .. error_code ..")
    # (SVM names some reasons in two words: "PF excp"); info1/info2 are the exit
    # qualification / exit info, intr_info the VMX interruption info (vector, type)
    EventFields("kvm", ("kvm_exit",),
                r"(?:vcpu (?P<vcpu_id>\d+) )?reason (?P<exit_reason>.+?)\s+rip 0x(?P<guest_rip>[0-9a-fA-F]+)"
                r"(?: info1 0x(?P<info1>[0-9a-fA-F]+) info2 0x(?P<info2>[0-9a-fA-F]+)"
                r"(?: intr_info 0x(?P<intr_info>[0-9a-fA-F]+) error_code 0x(?P<exit_error_code>[0-9a-fA-F]+))?)?",
                {"vcpu_id": "int", "exit_reason": "str", "guest_rip": "hex", "info1": "hex",
                 "info2": "hex", "intr_info": "hex", "exit_error_code": "hex"}),
    EventFields("kvm", ("kvm_exit",),
                r"reason (?P<exit_reason>.+?)\s+rip 0x(?P<guest_rip>[0-9a-fA-F]+) info (?P<info1>[0-9a-fA-F]+) (?P<info2>[0-9a-fA-F]+)$",
                {"exit_reason": "str", "guest_rip": "hex", "info1": "hex", "info2": "hex"}),
    EventFields("kvm", ("kvm_entry",), r"vcpu (?P<vcpu_id>\d+)(?:, rip 0x(?P<guest_rip>[0-9a-fA-F]+))?",
                {"vcpu_id": "int", "guest_rip": "hex"}),
    EventFields("kvm", ("kvm_userspace_exit",), r"reason (?P<exit_reason>\S+) \((?P<exit_code>-?\d+)\)",
                {"exit_reason": "str", "exit_code": "int"}),
    # "0:100402:50 (prot64)": CS base, guest rip, the instruction's bytes, the CPU mode
    EventFields("kvm", ("kvm_emulate_insn",),
                r"^[0-9a-fA-F]+:(?P<guest_rip>[0-9a-fA-F]+):(?P<insn>[0-9a-fA-F ]*?) \((?P<emulate_mode>\w+)\)",
                {"guest_rip": "hex", "insn": "str", "emulate_mode": "str"}),
    # "#PF (0x2)" / "#DF (0x0) [reinjected]": the vector's mnemonic and the error code
    EventFields("kvm", ("kvm_inj_exception",),
                r"^(?P<exception>#?\w+) \(0x(?P<inj_error_code>[0-9a-fA-F]+)\)(?P<reinjected> \[reinjected\])?",
                {"exception": "str", "inj_error_code": "hex", "reinjected": "str"}),
    # trace_marker writes: "tracing_mark_write: text" (the ip is the writer, printed %ps)
    EventFields("ftrace", ("print",), r"^(?P<ip>[^:\s=]+): (?P<buf>.*)$", {"ip": "ps", "buf": "str"}),
    EventFields("ftrace", ("print",), r"^ip=(?P<ip>\S+) buf=(?P<buf>.*)$", {"ip": "ps", "buf": "str"}),
    # function tracer: "do_user_addr_fault <-exc_page_fault" (or hex without symbols)
    EventFields("ftrace", ("function",), r"^(?P<ip>\S+) <-(?P<parent_ip>\S+)$",
                {"ip": "ps", "parent_ip": "ps"}, fast="FUNCTION"),
    # trace-cmd report of a function event: "func <-- parent" (-O parent), "ip=func
    # parent_ip=parent" (-R), the function alone (default)
    EventFields("ftrace", ("function",), r"^(?P<ip>\S+) <-- (?P<parent_ip>\S+)$",
                {"ip": "ps", "parent_ip": "ps"}),
    EventFields("ftrace", ("function",), r"^ip=(?P<ip>\S+) parent_ip=(?P<parent_ip>\S+)$",
                {"ip": "ps", "parent_ip": "ps"}),
    EventFields("ftrace", ("function",), r"^(?P<ip>\S+)$", {"ip": "ps"}),
)

#: Event names that tracefs prints without their system, and the system they belong to.
EXTRA_SYSTEMS: dict[str, str] = {
    **{name: "sched" for name in (
        "sched_wakeup", "sched_wakeup_new", "sched_waking", "sched_migrate_task",
        "sched_process_free", "sched_process_wait", "sched_wait_task", "sched_stat_runtime",
        "sched_kthread_stop", "sched_kthread_stop_ret", "sched_process_hang")},
    **{name: "irq" for name in ("softirq_entry", "softirq_exit", "softirq_raise",
                                "tasklet_entry", "tasklet_exit")},
    **{name: "timer" for name in (
        "hrtimer_start", "hrtimer_cancel", "hrtimer_expire_entry", "hrtimer_expire_exit",
        "hrtimer_init", "timer_start", "timer_cancel", "timer_expire_entry",
        "timer_expire_exit", "timer_init", "tick_stop")},
    **{name: "ftrace" for name in ("bprint", "bputs", "funcgraph_entry", "funcgraph_exit",
                                   "kernel_stack", "user_stack")},
    "vector_update": "irq_vectors", "vector_config": "irq_vectors",
    "vector_activate": "irq_vectors", "vector_deactivate": "irq_vectors",
}

SYSTEM_OF: dict[str, str] = {
    **EXTRA_SYSTEMS,
    **{event: spec.system for spec in EVENT_FIELDS for event in spec.events},
}

#: Columns a field of kind `ps` adds beside the UInt64 column.
SYM_SUFFIX = "_sym"


def system_of(event: pl.Expr) -> pl.Expr:
    """The tracepoint system of an event name printed without it (null when unknown)."""
    syscalls = pl.when(event.str.contains(r"^sys_(?:enter|exit)_")).then(pl.lit("syscalls"))
    known = event.replace_strict(SYSTEM_OF, default=None, return_dtype=pl.String)
    return pl.coalesce(known, syscalls)


def field_columns(events: pl.LazyFrame, event: str = "event", raw: str = "raw",
                  sample: pl.DataFrame | None = None) -> pl.LazyFrame:
    """Add the typed field columns of every event in :data:`EVENT_FIELDS` (null elsewhere).

    With `sample` (some rows of ``event`` and ``raw`` of the same data), table entries whose
    events are absent or whose pattern fits none of their sample rows are not run and add no
    columns (all-null columns would cost memory for nothing; readers of the event table must
    not assume a field column exists, as other sources lack them too).
    """
    specs = list(EVENT_FIELDS) if sample is None else _fitting(sample, event, raw)
    return _with_fields(events, specs, event, raw)


def _fitting(sample: pl.DataFrame, event: str, raw: str) -> list[EventFields]:
    """The table entries whose pattern fits one of their events' rows in `sample`."""
    # the sample's texts by event, once (a filter per table entry cost ~6 ms a call)
    texts: dict = {}
    for name, text in sample.select(event, raw).iter_rows():
        texts.setdefault(name, []).append(text)
    return [spec for spec in EVENT_FIELDS if _fits(spec, texts)]


def _with_fields(events: pl.LazyFrame, specs: list[EventFields], event: str,
                 raw: str) -> pl.LazyFrame:
    # rows the C scanner decoded (``__decoded``, values in ``__fast_<column>``) skip the regexes
    names = events.collect_schema().names()
    scanned = DECODED in names
    structs = []
    for i, spec in enumerate(specs):
        only = pl.col(event).is_in(list(spec.events))
        if scanned:
            only = only & ~pl.col(DECODED)
        structs.append(pl.when(only).then(pl.col(raw)).str.extract_groups(spec.pattern)
                       .alias(f"__fields{i}"))
    per_column: dict[str, list[pl.Expr]] = {}
    for i, spec in enumerate(specs):
        group = pl.col(f"__fields{i}")
        for name, kind in spec.kinds.items():
            text = group.struct.field(name)
            for column, expr in _convert(name, kind, text):
                if scanned and spec.fast and FAST_PREFIX + column in names:
                    per_column.setdefault(column, []).insert(0, pl.col(FAST_PREFIX + column))
                per_column.setdefault(column, []).append(expr)
    columns = [
        (exprs[0] if len(exprs) == 1 else pl.coalesce(exprs)).alias(column)
        for column, exprs in per_column.items()
    ]
    scanner_columns = [n for n in names if n == DECODED or n.startswith(FAST_PREFIX)]
    return (events.with_columns(structs).with_columns(columns)
            .drop([f"__fields{i}" for i in range(len(specs))] + scanner_columns))


#: The C scanner's columns: which rows it decoded, and their values (``__fast_id``, ...).
DECODED = "__decoded"
FAST_PREFIX = "__fast_"


def scanned_field_columns(table: pl.DataFrame, sample: pl.DataFrame, event: str = "event",
                          raw: str = "raw") -> pl.DataFrame:
    """:func:`field_columns` for a table from the C scanner: the regexes run only on the rows
    it did not decode (usually a few), whose values are then placed among the scanner's
    ``__fast_*`` ones. Same columns, same values as the regexes on all rows."""
    specs = _fitting(sample, event, raw)
    names = [name for spec in specs for name in spec.events]
    undecoded = table.get_column(DECODED).not_().arg_true()
    todo = undecoded.filter(table.get_column(event).gather(undecoded).is_in(names))
    # the scanner's values count where their table entry runs, as in field_columns
    fast = {column for spec in specs if spec.fast for name, kind in spec.kinds.items()
            for column in ((name, name + SYM_SUFFIX) if kind == "ps" else (name,))
            if FAST_PREFIX + column in table.columns}
    schema = _field_schema(tuple(EVENT_FIELDS.index(spec) for spec in specs))
    parsed = None
    if todo.len():
        rows = table.select(event, raw)[todo]
        present = set(rows.get_column(event).unique().to_list())
        run = [spec for spec in specs if present.intersection(spec.events)]
        # only the entries of the events left to the regexes (a plan per entry costs ~1 ms)
        parsed = _with_fields(rows.lazy(), run, event, raw).collect().drop(event, raw)
    # the regexes' values, spread to the table's rows (null elsewhere) by one gather
    with_values = [name for name in schema
                   if parsed is not None and name in parsed.columns
                   and parsed.get_column(name).null_count() < parsed.height]
    spread = _spread(parsed.select(with_values), todo, table.height) if with_values else None
    columns = []
    for name, dtype in schema.items():
        if name in with_values:
            values = spread.get_column(name)
            # where the regexes ran the scanner's value is null: one or the other
            columns.append((pl.coalesce(pl.lit(values), pl.col(FAST_PREFIX + name))
                            if name in fast else pl.lit(values)).alias(name))
        elif name in fast:
            columns.append(pl.col(FAST_PREFIX + name).alias(name))
        else:
            columns.append(pl.lit(None, dtype=dtype).alias(name))
    scanner_columns = [n for n in table.columns if n == DECODED or n.startswith(FAST_PREFIX)]
    return table.with_columns(columns).drop(scanner_columns)


def _spread(values: pl.DataFrame, rows: pl.Series, height: int) -> pl.DataFrame:
    """`values` (one row per entry of `rows`, ascending) at those rows of a `height`-row
    frame, null elsewhere: one index column, then a gather of every column."""
    at = pl.repeat(None, height, dtype=pl.UInt32, eager=True).scatter(
        rows, pl.int_range(0, rows.len(), dtype=pl.UInt32, eager=True))
    return values.select(pl.all().gather(pl.lit(at)))


@functools.lru_cache(maxsize=64)
def _field_schema(spec_indexes: tuple[int, ...]) -> pl.Schema:
    """The columns field_columns adds when the entries `spec_indexes` run (names, dtypes)."""
    empty = pl.LazyFrame(schema={"event": pl.String, "raw": pl.String})
    specs = [EVENT_FIELDS[i] for i in spec_indexes]
    columns = _with_fields(empty, specs, "event", "raw").collect_schema()
    return pl.Schema({n: t for n, t in columns.items() if n not in ("event", "raw")})


def field_table_schema() -> pl.Schema:
    """Every column the table's entries can add, in the order they add them."""
    return _field_schema(tuple(range(len(EVENT_FIELDS))))


def fast_decoders(scanner) -> dict[bytes, int]:
    """{event name: the C scanner's decoder number} from the table's ``fast`` entries."""
    return {name.encode(): getattr(scanner, spec.fast)
            for spec in EVENT_FIELDS if spec.fast for name in spec.events}


def field_sample(events: pl.DataFrame, event: str = "event", per_event: int = 20) -> pl.DataFrame:
    """A few rows of each event, for :func:`field_columns`'s `sample`."""
    return events.group_by(event, maintain_order=True).head(per_event)


def _fits(spec: EventFields, texts_by_event: dict) -> bool:
    texts = [t for name in spec.events for t in texts_by_event.get(name, ())]
    if not texts:
        return False
    try:
        regex = re.compile(spec.pattern)
    except re.error:
        return True     # a pattern only the Rust engine reads: run it
    return any(t is not None and regex.search(t) for t in texts)


def _convert(name: str, kind: str, text: pl.Expr) -> list[tuple[str, pl.Expr]]:
    dtype = FIELD_COLUMNS.get(name) or CORE_COLUMNS.get(name) or pl.String
    if kind == "int":
        return [(name, text.cast(pl.Int64, strict=False).cast(dtype, strict=False))]
    if kind == "hex":
        return [(name, _hex(text))]
    if kind == "hexdec":
        if dtype in (pl.Int64, pl.UInt64):
            value = _hex(text.str.extract(r"^(0x[0-9a-fA-F]+)"))
            return [(name, value.reinterpret(signed=dtype == pl.Int64))]
        decimal = text.str.extract(r"\((-?\d+)\)$")
        return [(name, decimal.cast(pl.Int64, strict=False).cast(dtype, strict=False))]
    if kind == "ps":
        is_hex = text.str.contains(r"^0x[0-9a-fA-F]+$")
        return [(name, pl.when(is_hex).then(_hex(text))),
                (name + SYM_SUFFIX, pl.when(~is_hex).then(text))]
    if kind == "hexlist":
        # "%lx, %lx, ...": bare hex, one space after each comma (a value that is not is null)
        values = text.str.split(", ").list.eval(
            pl.element().str.to_integer(base=16, dtype=pl.UInt64, strict=False))
        return [(name, values)]
    if kind == "le_u64_bytes":
        # "0a, 00, ...": 48 little-endian bytes -> six UInt64
        weights = pl.Series([256 ** k for k in range(8)] * 6, dtype=pl.UInt64)
        data = text.str.split(", ").list.eval(
            pl.element().str.to_integer(base=16, dtype=pl.UInt64, strict=False))
        # pad every list to 48 bytes so the reshape holds; only a full array is a value
        padded = data.list.concat(pl.lit(pl.Series([[0] * 48], dtype=pl.List(pl.UInt64))))
        values = padded.list.head(48).list.eval(
            (pl.element() * pl.lit(weights)).reshape((-1, 8)).arr.sum())
        return [(name, pl.when(data.list.len() == 48).then(values))]
    if kind == "handled":
        return [(name, pl.when(text == "handled").then(1).when(text == "unhandled").then(0)
                 .otherwise(text.cast(pl.Int32, strict=False)).cast(pl.Int32))]
    if kind == "bool":
        return [(name, pl.when(text.is_in(["true", "1"])).then(True)
                 .when(text.is_in(["false", "0"])).then(False))]
    return [(name, text)]


def _hex(text: pl.Expr) -> pl.Expr:
    return text.str.strip_prefix("0x").str.to_integer(base=16, dtype=pl.UInt64, strict=False)
