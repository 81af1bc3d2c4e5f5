"""Fault chains: the exceptions that ended a machine (or nearly did), in order, and the verdict.

Evidence by source:
  qemu     ``exception`` records with ``prev_vector`` (``check_exception old: X``): a record
           raised while delivering the one before it continues that chain (#PF -> #DF ->
           ``Triple fault``). A record with no ``prev_vector`` starts a new one.
  console  ``double_fault`` / ``stack_overflow`` / ``oops`` / ``panic`` rows and a second
           ``Linux version`` banner (the machine came back: a reset).
  kvm      ``kvm_exit`` TRIPLE_FAULT / SVM shutdown, ``kvm_userspace_exit`` KVM_EXIT_SHUTDOWN,
           and the ``kvm_inj_exception`` rows before them.

One chain per episode (a reset, a #DF, a stack fault, a loop). Only episodes are chains:
an ordinary page fault that was delivered and handled is not one.

Which stack received each exception (``stack``) comes from the IDT gate's IST and the CPL
(analysis/stacks.py) when the capture has the IDT (a snapshot, an ``idt`` meta); without it,
a CPL 0 fault whose own frame push faulted at CR2 just below RSP shows the CPU used the same
stack, and that is said (``stack_evidence``); otherwise ``stack`` is null.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import polars as pl

from kmltrace.analysis import kvm as kvm_mod
from kmltrace.analysis.incidents import Incident, evidence
from kmltrace.analysis.stacks import landing_stack
from kmltrace.output import hexstr
from kmltrace.schema import DF_VECTOR, PF_VECTOR, VECTOR_NAMES

#: the frame a 64-bit CPU pushes (SS, RSP, RFLAGS, CS, RIP, error code) plus the 16-byte
#: alignment it applies first: a fault this far below RSP is the frame's own push
FRAME_BYTES = 64
PAGE = 4096
USER_TOP = 0x0000_8000_0000_0000
LOOP_MIN_REPEATS = 32

CONSOLE_EVENTS = ("double_fault", "stack_overflow", "oops", "panic", "boot", "kernel_offset",
                  "halted")


@dataclass
class ChainResult:
    chains: list[list[dict]] = field(default_factory=list)
    incidents: list[Incident] = field(default_factory=list)


def analyse_chains(events: pl.LazyFrame, capture) -> ChainResult:
    """The fault chains and their incidents (triple_fault, double_fault, stack_starvation,
    oops) from the QEMU, console and KVM evidence in `events`."""
    result = ChainResult()
    names = set(events.collect_schema().names())
    offsets = _kaslr_offsets(events, names)
    symbolize = _symbolizer(capture, offsets.get("last", 0))
    gates = _idt_gates(capture)
    for frame in _qemu_files(events, names):
        _qemu_episodes(frame, gates, symbolize, result)
    _console_episodes(events, names, symbolize, offsets, result)
    _kvm_episodes(events, symbolize, result)
    _merge_witnesses(result)
    _fold_repeated_starvation(result)
    return result


_SEVERITY_RANK = {"critical": 0, "error": 1, "warning": 2, "info": 3}


def _merge_witnesses(result: ChainResult) -> None:
    """The same #DF seen by QEMU and by the console (same RSP, same CR2) is one episode:
    keep QEMU's chain, give it the kernel's symbol and the task, and the console's lines as
    more evidence of the same incidents."""
    drop: set[int] = set()
    for ci, chain in enumerate(result.chains):
        if not chain or chain[-1].get("source") != "console":
            continue
        cdf = chain[-1]
        cpf = chain[0] if chain[0]["vector"] == PF_VECTOR else None
        for qi, qchain in enumerate(result.chains):
            if qi in drop or not qchain or qchain[0].get("source") != "qemu":
                continue
            qdf = next((e for e in qchain if e["vector"] == DF_VECTOR), None)
            qpf = qchain[0] if qchain[0]["vector"] == PF_VECTOR else None
            if qdf is None or qdf["rsp"] != cdf["rsp"] or (
                    cpf and qpf and cpf["cr2"] not in (qpf["cr2"], None)
                    and not _starved_at(_int(cpf["rsp"]), _int(qpf["cr2"]))):
                continue
            for e in qchain:
                if e.get("symbol") is None and not e.get("shutdown"):
                    e["symbol"] = cdf.get("symbol")
            _fold_incidents(result.incidents, ci, qi)
            drop.add(ci)
            break
    if not drop:
        return
    renumber, kept = {}, []
    for i, chain in enumerate(result.chains):
        if i not in drop:
            renumber[i] = len(kept)
            kept.append(chain)
    result.chains = kept
    for incident in result.incidents:
        if "chain" in incident.extra:
            incident.extra["chain"] = renumber.get(incident.extra["chain"])


def _fold_repeated_starvation(result: ChainResult) -> None:
    """One stack_starvation per stack: episodes faulting at the same RSP and CR2 (a loop that
    moved to another instruction) add their evidence to the first one."""
    first: dict = {}
    for incident in list(result.incidents):
        if incident.kind != "stack_starvation" or incident.extra.get("rsp") is None:
            continue
        key = (incident.extra.get("rsp"), incident.extra.get("cr2"),
               (incident.evidence[0].get("source") if incident.evidence else None))
        if key not in first:
            first[key] = incident
            continue
        kept = first[key]
        kept.evidence = kept.evidence + incident.evidence
        kept.extra.setdefault("chains", [kept.extra.get("chain")]).append(incident.extra.get("chain"))
        if _SEVERITY_RANK[incident.severity] < _SEVERITY_RANK[kept.severity]:
            kept.severity = incident.severity
        result.incidents.remove(incident)


def _fold_incidents(incidents: list[Incident], from_chain: int, into_chain: int) -> None:
    for incident in [i for i in incidents if i.extra.get("chain") == from_chain]:
        target = next((i for i in incidents if i.extra.get("chain") == into_chain
                       and i.kind == incident.kind), None)
        if target is None:
            continue
        target.evidence = target.evidence + incident.evidence
        for key in ("pid", "comm", "cpu"):
            if getattr(target, key) is None:
                setattr(target, key, getattr(incident, key))
        if _SEVERITY_RANK[incident.severity] < _SEVERITY_RANK[target.severity]:
            target.severity = incident.severity
        if incident.explanation and not target.explanation:
            target.explanation = incident.explanation
        target.summary += f" (also on the console: {incident.summary})"
        incidents.remove(incident)


def _int(value: str | None) -> int | None:
    return None if value is None else int(value, 16)


# -- QEMU ----------------------------------------------------------------------------------------

_QEMU_COLUMNS = ("seq", "file", "line", "event", "vector", "prev_vector", "cpl", "cs", "ip", "ss",
                 "rsp", "cr2", "error_code", "soft_int", "idt_base", "cpu", "ts_ns", "raw",
                 "in_asm")


def _qemu_files(events: pl.LazyFrame, names: set[str]):
    """Each QEMU log's records, identical consecutive exceptions folded into one row with
    ``repeats`` (a fault loop of 400 000 records becomes one row)."""
    if "prev_vector" not in names:
        return
    cols = [pl.col(c) if c in names else pl.lit(None).alias(c) for c in _QEMU_COLUMNS]
    rows = (events.filter((pl.col("source") == "qemu")
                          & pl.col("event").is_in(["exception", "triple_fault", "cpu_reset"]))
            .select(cols).collect())
    if rows.height == 0:
        return
    key = pl.struct("event", "vector", "prev_vector", "cpl", "ip", "rsp", "cr2", "error_code")
    vector = pl.col("vector")
    # interrupts (vector >= 32) are not faults: they leave the chains, unless a fault was
    # raised while delivering one (the next record names it as prev_vector)
    interrupt = ((pl.col("event") == "exception") & (vector >= 32)
                 & (pl.col("prev_vector").shift(-1).ne_missing(vector)))
    for _, frame in rows.sort("file", "seq").group_by("file", maintain_order=True):
        frame = frame.filter(~interrupt.fill_null(False))
        runs = frame.with_columns(key.ne_missing(key.shift(1)).cum_sum().alias("_run"))
        folded = runs.group_by("_run", maintain_order=True).agg(
            pl.all().exclude("_run").first(), pl.len().alias("repeats"),
            pl.col("line").last().alias("last_line"))
        yield folded.to_dicts()


def _qemu_episodes(rows: list[dict], gates, symbolize, result: ChainResult) -> None:
    pending: list[dict] = []
    seen_exception = False
    for row in rows:
        event = row["event"]
        if event == "exception":
            if row.get("soft_int") == 1 and row["prev_vector"] is None:
                continue                       # int $n: software interrupts are not faults
            if row["prev_vector"] is None and pending:
                _close_qemu(pending, None, gates, symbolize, result)
                pending = []
            pending.append(row)
            seen_exception = True
            if row["repeats"] >= LOOP_MIN_REPEATS:
                _close_qemu(pending, None, gates, symbolize, result)
                pending = []
        elif event == "triple_fault":
            _close_qemu(pending, row, gates, symbolize, result)
            pending = []
        elif event == "cpu_reset" and seen_exception and pending:
            # a reset right after exceptions without a "Triple fault" line (another cause)
            _close_qemu(pending, None, gates, symbolize, result, reset=row)
            pending = []
    if pending:
        _close_qemu(pending, None, gates, symbolize, result)


def _starved(row: dict) -> str | None:
    """Why a CPL 0 #PF could not push its frame, or None: ``frame`` when CR2 lies in the
    frame below RSP, ``page`` when CR2 is on the page the frame's first push goes to (RSP
    itself points into missing memory)."""
    if row.get("cpl") != 0 or row.get("vector") != PF_VECTOR:
        return None
    return _starved_at(row.get("rsp"), row.get("cr2"))


def _starved_at(rsp: int | None, cr2: int | None) -> str | None:
    if rsp is None or cr2 is None:
        return None
    if 0 < rsp - cr2 <= FRAME_BYTES:
        return "frame"
    if cr2 // PAGE == (rsp - 8) // PAGE:
        return "page"
    return None


def _close_qemu(chain: list[dict], triple: dict | None, gates, symbolize, result: ChainResult,
                reset: dict | None = None) -> None:
    vectors = [r["vector"] for r in chain]
    starved = [r for r in chain if _starved(r)]
    looped = bool(chain) and chain[-1]["repeats"] >= LOOP_MIN_REPEATS
    escalated = len(chain) > 1
    if not (triple or reset or DF_VECTOR in vectors or starved or looped or escalated):
        return                                   # delivered and handled: not an episode
    exceptions = []
    for i, row in enumerate(chain):
        nested_next = i + 1 < len(chain) and chain[i + 1]["prev_vector"] == row["vector"]
        failed = nested_next or (triple is not None and i == len(chain) - 1)
        exceptions.append(_qemu_exception(row, gates, symbolize, delivered=not failed))
    _infer_df_stack(chain, exceptions, triple)
    if triple is not None:
        # the fault raised while delivering the last one: it has no record of its own
        exceptions.append({"vector": triple["vector"],
                           "name": VECTOR_NAMES.get(triple["vector"], None),
                           "cpl": chain[-1]["cpl"] if chain else None,
                           "cs": hexstr(chain[-1]["cs"]) if chain else None,
                           "rip": hexstr(chain[-1]["ip"]) if chain else None,
                           "rsp": hexstr(chain[-1]["rsp"]) if chain else None,
                           "cr2": None, "error_code": None, "stack": None, "symbol": None,
                           "ts_ns": None, "delivered": False, "shutdown": True,
                           "source": "qemu", "file": triple["file"], "line": triple["line"]})
    result.chains.append(exceptions)
    _qemu_incidents(chain, exceptions, triple, reset, starved, looped, result)


def _infer_df_stack(chain: list[dict], exceptions: list[dict], triple: dict | None) -> None:
    """A #DF whose delivery faulted with a #PF, at the RSP where a #PF frame push had just
    faulted, was pushed onto that same stack: its gate has no IST either."""
    first = chain[0] if chain else None
    if triple is None or first is None or not _starved(first) or triple["vector"] != PF_VECTOR:
        return
    last, out = chain[-1], exceptions[len(chain) - 1]
    if last["vector"] == DF_VECTOR and out["stack"] is None and last["cpl"] == 0 \
            and last["rsp"] == first["rsp"]:
        out["stack"] = "same"
        out["stack_evidence"] = ("delivering the #DF faulted (#PF) at the RSP whose frame push "
                                 "had just faulted: the #DF frame went to the same stack")


def _qemu_exception(row: dict, gates, symbolize, delivered: bool) -> dict:
    vector, cpl = row["vector"], row["cpl"]
    ist = gates.get(vector) if gates else None
    stack = landing_stack(cpl, ist)
    stack_evidence = f"IDT gate {vector}: IST {ist}" if stack else None
    if stack is None and not delivered and _starved(row):
        stack = "same"
        stack_evidence = ("the frame push faulted at CR2, just below RSP: the CPU pushed onto "
                          "the interrupted stack (no IST, CPL 0)")
    out = {"vector": vector, "name": VECTOR_NAMES.get(vector), "cpl": cpl,
           "cs": hexstr(row["cs"]), "rip": hexstr(row["ip"]), "ss": hexstr(row["ss"]),
           "rsp": hexstr(row["rsp"]),
           "cr2": hexstr(row["cr2"]) if vector == PF_VECTOR else None,
           "error_code": hexstr(row["error_code"]), "stack": stack,
           "symbol": symbolize(row["ip"]), "ts_ns": row["ts_ns"], "delivered": delivered,
           "source": "qemu", "file": row["file"], "line": row["line"]}
    if stack_evidence:
        out["stack_evidence"] = stack_evidence
    if row.get("in_asm"):
        out["in_asm"] = row["in_asm"]          # -d in_asm: the block that ran just before
    if row["repeats"] > 1:
        out["repeats"] = row["repeats"]
        out["last_line"] = row["last_line"]
    return out


def _ev(row: dict, text: str | None = None) -> dict:
    return evidence(row.get("file") or "qemu", text or row.get("raw") or "", row.get("line"))


def _describe(exceptions: list[dict]) -> str:
    parts = []
    for e in exceptions:
        name = e["name"] or f"vector {e['vector']}"
        where = f" at {e['symbol'] or e['rip']}" if e.get("rip") and not e.get("shutdown") else ""
        cpl = f" (CPL {e['cpl']})" if e.get("cpl") is not None and not e.get("shutdown") else ""
        parts.append(f"{name}{cpl}{where}")
    return " -> ".join(parts)


def _qemu_incidents(chain, exceptions, triple, reset, starved, looped, result) -> None:
    story = _describe(exceptions)
    ended = triple is not None or reset is not None
    proof = [_ev(r) for r in chain]
    if triple is not None:
        proof.append(_ev(triple))
        result.incidents.append(Incident(
            "triple_fault", f"the CPU shut down (triple fault): {story}; the machine reset",
            evidence=proof, cpu=chain[0].get("cpu") if chain else None,
            extra={"chain": len(result.chains) - 1}))
    if any(r["vector"] == DF_VECTOR for r in chain):
        df = next(r for r in chain if r["vector"] == DF_VECTOR)
        cause = VECTOR_NAMES.get(df["prev_vector"]) if df["prev_vector"] is not None else None
        result.incidents.append(Incident(
            "double_fault",
            f"double fault (#DF) {('while delivering ' + cause) if cause else ''} at CPL "
            f"{df['cpl']}, rip {hexstr(df['ip'])}"
            + ("; a reset followed" if ended else "; the #DF was delivered (no reset)"),
            severity="critical" if ended else "error", evidence=proof, cpu=df.get("cpu"),
            extra={"chain": len(result.chains) - 1}))
    if starved:
        first = starved[0]
        result.incidents.append(_starvation_incident(first, exceptions, chain, ended, looped,
                                                     proof, len(result.chains) - 1))


def _starvation_incident(row, exceptions, chain, ended, looped, proof, chain_no) -> Incident:
    rsp, cr2 = row["rsp"], row["cr2"]
    below = rsp - cr2
    user_stack = rsp < USER_TOP
    exc = next(e for e in exceptions if e["line"] == row["line"])
    where = exc["symbol"] or exc["rip"]
    df = next((e for e in exceptions if e["vector"] == DF_VECTOR), None)
    pf_ist = "no IST" if exc["stack"] == "same" else (
        f"IST {exc['stack'][3:]}" if exc["stack"] and exc["stack"].startswith("ist") else
        "an IST the evidence does not show")
    text = [
        f"At CPL 0 the instruction at {where} touched {hexstr(cr2)}, {below} bytes below the "
        f"stack pointer {hexstr(rsp)}"
        + (", a user-range stack as a Kernel Mode Linux process has" if user_stack else "")
        + ": that memory was not there, so the CPU raised a page fault (#PF)."]
    if exc["stack"] == "same" or not exc["delivered"]:
        text.append(
            "A fault at CPL 0 through a gate with no IST does not switch stacks: the CPU pushes "
            "its exception frame onto the same stack, just below RSP, which is the missing "
            "memory again, so the #PF could not even be delivered.")
    if df is not None and ended:
        text.append(
            "The CPU turned that into a double fault (#DF); the #DF gate had no IST either "
            "(or its IST stack was unusable), its frame went to the same place, and the third "
            "fault shut the CPU down: a triple fault, which resets the machine with no "
            "handler, oops or log.")
    elif df is not None:
        text.append(
            f"The CPU turned that into a double fault (#DF), which was delivered"
            + (f" on {df['stack']}" if df.get("stack") and df["stack"] != "same" else
               " on a stack of its own (its gate has an IST)")
            + ": the machine survived, but the faulting code could not have its fault handled "
              "normally (Linux kills the process or oopses).")
    elif looped:
        text.append(
            f"The #PF was delivered ({pf_ist}) but the handler returned without fixing the "
            "stack, so the same instruction faulted again and again: the CPU is wedged.")
    text.append(
        "On Kernel Mode Linux every exception or interrupt taken while a kernel-mode process "
        "runs arrives at CPL 0 on that process's own stack unless its gate has an IST entry; "
        "a stack that needs to grow, or is exhausted, cannot take the very fault that would "
        "grow it. Gates a kernel-mode process can take (#PF, #DF, the timer) need IST stacks.")
    severity = "critical" if ended else "error"
    summary = (f"#PF at CPL 0 could not push its frame: CR2 {hexstr(cr2)} is {below} bytes below "
               f"RSP {hexstr(rsp)} ({row['file'] and 'qemu'} line {row['line']})"
               + ("; it led to a reset" if ended else "; survived (delivered on another stack)"
                  if df is not None or exc["stack"] not in (None, "same") else "; no reset"))
    return Incident("stack_starvation", summary, severity=severity, cpu=row.get("cpu"),
                    evidence=proof, explanation=" ".join(text),
                    extra={"chain": chain_no, "rsp": hexstr(rsp), "cr2": hexstr(cr2),
                           "user_range_stack": user_stack})


# -- console --------------------------------------------------------------------------------------

_CONSOLE_COLUMNS = ("seq", "file", "line", "event", "vector", "cpu", "pid", "comm", "cs", "ss",
                    "ip", "rsp", "cr2", "error_code", "symbol", "stack_lo", "stack_hi",
                    "address", "boot_index", "ts_ns", "raw", "call_trace", "stack_type")


def _console_episodes(events: pl.LazyFrame, names: set[str], symbolize, offsets: dict,
                      result) -> None:
    cols = [pl.col(c) if c in names else pl.lit(None).alias(c) for c in _CONSOLE_COLUMNS]
    rows = (events.filter((pl.col("source") == "console") & pl.col("event").is_in(CONSOLE_EVENTS))
            .select(cols).sort("file", "seq").collect())
    for (file,), frame in rows.group_by("file", maintain_order=True):
        def per_boot(ip, boot=None, _file=file):
            offset = offsets.get((_file, boot))
            return symbolize(ip, offset) if offset is not None else symbolize(ip)
        _console_file(frame.to_dicts(), per_boot, result)


def _console_file(rows: list[dict], symbolize, result) -> None:
    _silent_resets(rows, result)
    for i, row in enumerate(rows):
        later = rows[i + 1:]
        reset_after = next((r for r in later if r["event"] == "boot"), None)
        panic_after = next((r for r in later if r["event"] == "panic"
                            and (reset_after is None or r["seq"] < reset_after["seq"])), None)
        if row["event"] in ("oops", "panic"):
            prev = rows[i - 1] if i else None
            if row["event"] == "panic" and prev is not None and prev["event"] in ("oops",
                                                                                  "double_fault"):
                continue                                  # the oops incident says it panicked
            critical = row["event"] == "panic" or panic_after is not None
            who = _who(row)
            summary = (f"kernel {'panic' if row['event'] == 'panic' else 'oops'}: "
                       f"{(row['raw'] or '').strip()}" + who
                       + (f" at {row['symbol']}" if row.get("symbol") else "")
                       + ("; the kernel panicked" if panic_after is not None else "")
                       + (f"; the machine booted again (banner at line {reset_after['line']})"
                          if reset_after is not None else ""))
            proof = [evidence(row["file"], row["raw"] or "", row["line"])]
            if panic_after is not None:
                proof.append(evidence(panic_after["file"], panic_after["raw"] or "",
                                      panic_after["line"]))
            result.incidents.append(Incident(
                "oops", summary, severity="critical" if critical else "error", pid=row["pid"],
                comm=row["comm"], cpu=row["cpu"], ts_ns=row["ts_ns"], evidence=proof))
        is_df_head = row["event"] in ("double_fault", "stack_overflow") or (
            row["event"] == "oops" and row["vector"] == DF_VECTOR)
        prev = rows[i - 1] if i else None
        if is_df_head and not (prev is not None and prev["line"] >= row["line"] - 3 and (
                prev["event"] in ("double_fault", "stack_overflow")
                or (prev["event"] == "oops" and prev["vector"] == DF_VECTOR))):
            _console_double_fault(rows, i, reset_after, panic_after, symbolize, result)


def _silent_resets(rows: list[dict], result) -> None:
    """A boot banner after a boot that printed no panic, oops, halt or reboot line: the
    machine reset without a word, which is what a triple fault looks like on a console."""
    previous = None
    said = False
    for row in rows:
        if row["event"] == "boot":
            if previous is not None and not said:
                result.incidents.append(Incident(
                    "unclean_reset",
                    f"the machine booted again (line {row['line']}) and the boot before it "
                    f"(line {previous['line']}) printed no panic, oops, halt or reboot: a silent "
                    "reset, as a triple fault leaves it",
                    evidence=[evidence(previous["file"], previous["raw"] or "", previous["line"]),
                              evidence(row["file"], row["raw"] or "", row["line"])],
                    explanation=(
                        "A triple fault resets the CPU with no handler running, so the kernel "
                        "prints nothing: the console just starts over. On Kernel Mode Linux the "
                        "usual cause is a kernel-mode process whose stack cannot take a fault "
                        "(no IST on the gate). QEMU's -d int log or the host's kvm events of "
                        "that run would show the chain.")))
            previous, said = row, False
        elif row["event"] in ("panic", "oops", "halted", "double_fault", "stack_overflow"):
            said = True


def _who(row: dict) -> str:
    if row.get("comm") is None:
        return ""
    return f" in {row['comm']} (pid {row['pid']}) on CPU {row['cpu']}"


def _console_double_fault(rows, i, reset_after, panic_after, symbolize, result) -> None:
    """A #DF reported by the kernel: the #DF handler ran (on its IST stack: IST 1 on mainline
    and on KML alike). A ``stack guard page was hit`` line, or a CR2 just below RSP at CPL 0,
    says why: the #PF before it could not push its frame."""
    group = [rows[i]] + [r for r in rows[i + 1:i + 3]
                         if r["line"] <= rows[i]["line"] + 3
                         and r["event"] in ("double_fault", "stack_overflow", "oops")]
    head = rows[i]
    guard = next((r for r in group if r["event"] == "stack_overflow"), None)
    rip = head.get("ip")
    symbol = symbolize(rip, head.get("boot_index")) or _strip_len(head.get("symbol"))
    cpl = None if head.get("cs") is None else head["cs"] & 3
    rsp = head.get("rsp")
    hidden = guard is not None and (guard.get("address") is None or _hashed(guard))
    # the faulting address: the guard page hit, else the CR2 the oops printed (at die time
    # that is the last fault's: the frame push that failed)
    fault = guard["address"] if guard is not None and not hidden else head.get("cr2")
    starved = _starved_at(rsp, fault) if cpl == 0 else None
    exceptions = []
    if starved:
        exceptions.append({"vector": PF_VECTOR, "name": "#PF", "cpl": cpl,
                           "cs": hexstr(head.get("cs")), "rip": hexstr(rip),
                           "rsp": hexstr(rsp), "cr2": hexstr(fault),
                           "error_code": None, "stack": "same", "symbol": symbol,
                           "ts_ns": (guard or head)["ts_ns"], "delivered": False,
                           "inferred": True,
                           "stack_evidence": "the fault address is just below RSP at CPL 0: the "
                                             "#PF frame could not be pushed on that stack",
                           "source": "console", "file": (guard or head)["file"],
                           "line": (guard or head)["line"]})
    df_row = next((r for r in group if r["event"] == "double_fault" or (
        r["event"] == "oops" and r["vector"] == DF_VECTOR)), head)
    exceptions.append({"vector": DF_VECTOR, "name": "#DF", "cpl": cpl,
                       "cs": hexstr(head.get("cs")), "rip": hexstr(rip),
                       "ss": hexstr(head.get("ss")), "rsp": hexstr(rsp), "cr2": None,
                       "error_code": hexstr(next((r["error_code"] for r in group
                                                  if r["error_code"] is not None), None)),
                       "stack": "ist1", "symbol": symbol, "ts_ns": df_row["ts_ns"],
                       "delivered": True,
                       "stack_evidence": "the kernel's #DF handler ran and printed this: Linux "
                                         "(mainline and KML) puts #DF on IST 1",
                       "source": "console", "file": df_row["file"], "line": df_row["line"]})
    result.chains.append(exceptions)
    chain_no = len(result.chains) - 1
    proof = [evidence(r["file"], r["raw"] or "", r["line"]) for r in group]
    for extra_row in (panic_after, reset_after):
        if extra_row is not None:
            proof.append(evidence(extra_row["file"], extra_row["raw"] or "", extra_row["line"]))
    stack_text = ""
    if guard is not None:
        kind = f"{guard['stack_type']} " if guard.get("stack_type") else ""
        stack_text = (f"; kernel {kind}stack overflow: the guard page was hit"
                      + (f" at {hexstr(guard['address'])}, below the stack "
                         f"{hexstr(guard['stack_lo'])}..{hexstr(guard['stack_hi'])}"
                         if not hidden else
                         " (the kernel hid the addresses: hashed or ptrval %p)"))
    elif starved and rsp is not None and rsp < USER_TOP:
        stack_text = (f"; RSP {hexstr(rsp)} is a user-range stack at CPL 0 and CR2 "
                      f"{hexstr(fault)} lies just below it")
    summary = (f"double fault{_who(head)}" + (f" at {symbol}" if symbol else "")
               + (f", RSP {hexstr(rsp)}" if rsp is not None else "")
               + stack_text
               + ("; a reset followed (a new boot banner)" if reset_after is not None else "")
               + ("; the kernel panicked" if panic_after is not None else ""))
    extra = {"chain": chain_no}
    if guard is not None:
        extra["stack"] = {"type": guard.get("stack_type"), "lo": hexstr(guard["stack_lo"]),
                          "hi": hexstr(guard["stack_hi"]), "guard_hit": hexstr(guard["address"]),
                          "hashed": hidden}
    result.incidents.append(Incident(
        "double_fault", summary, severity="critical" if reset_after is not None else "error",
        pid=head["pid"], comm=head["comm"], cpu=head["cpu"], ts_ns=head["ts_ns"],
        evidence=proof, extra=extra))
    if starved:
        result.incidents.append(_console_starvation(head, guard, hidden, rsp, fault, symbol,
                                                    reset_after, proof, chain_no))


def _console_starvation(head, guard, hidden, rsp, fault, symbol, reset_after, proof, chain_no):
    below = rsp - fault
    where = f"{below} bytes below" if below > 0 else "at"
    if guard is not None:
        what = (f"The kernel stack"
                + (f" {hexstr(guard['stack_lo'])}..{hexstr(guard['stack_hi'])}" if not hidden
                   else "") + f" of {head.get('comm') or 'the task'} was used up: at "
                f"{symbol or 'RIP'} the CPU, at CPL 0, touched the guard page below it.")
    else:
        what = (f"At {symbol or 'RIP'} the CPU ran at CPL 0 with RSP {hexstr(rsp)}"
                + (", a user-range address, as a Kernel Mode Linux process does"
                   if rsp < USER_TOP else "")
                + f", and touched {hexstr(fault)} just below it, which was not mapped.")
    explanation = (
        what + " The page fault gate has no IST, so the CPU tried to push the #PF frame onto "
        "that same stack, which faulted again and became a double fault. Linux gives #DF its "
        "own IST stack, which is why this ended in an oops and not a silent reset. A Kernel "
        "Mode Linux process is in this position on every fault on its own stack: at CPL 0, "
        "with no stack switch unless the gate has an IST.")
    return Incident(
        "stack_starvation",
        f"#PF at CPL 0 could not push its frame: the fault address {hexstr(fault)} is {where} "
        f"RSP {hexstr(rsp)}" + _who(head)
        + ("; a reset followed" if reset_after is not None
           else "; survived as a #DF on IST 1 (the kernel oopsed)"),
        severity="critical" if reset_after is not None else "error",
        pid=head["pid"], comm=head["comm"], cpu=head["cpu"], ts_ns=head["ts_ns"],
        evidence=proof, explanation=explanation,
        extra={"chain": chain_no, "rsp": hexstr(rsp), "cr2": hexstr(fault),
               "user_range_stack": rsp < USER_TOP})


def _hashed(guard: dict) -> bool:
    """4.15+ prints %p hashed: 32-bit-looking values where kernel addresses belong."""
    values = [guard.get(k) for k in ("address", "stack_lo", "stack_hi")]
    return any(v is not None and v < USER_TOP and v < (1 << 32) for v in values) or (
        guard.get("stack_lo") is not None and guard.get("stack_hi") is not None
        and guard["stack_lo"] >= guard["stack_hi"])


def _strip_len(symbol: str | None) -> str | None:
    """``func+0x9/0x50`` -> ``func+0x9`` (the /len is the function's size)."""
    if not symbol:
        return None
    head, _, module = symbol.partition(" ")
    return head.split("/")[0] + (f" {module}" if module else "")


# -- KVM -----------------------------------------------------------------------------------------

def _kvm_episodes(events: pl.LazyFrame, symbolize, result) -> None:
    names = set(events.collect_schema().names())
    if "event" not in names:
        return
    kvm = kvm_mod.kvm_rows(events)
    if kvm.height == 0:
        return
    downs = kvm_mod.shutdowns(kvm).sort("ts_ns", "seq", nulls_last=True)
    injected = kvm_mod.injections(kvm)
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
        insn = kvm_mod.last_emulated(kvm, row["ts_ns"], row["pid"])
        guest_rip = row["guest_rip"] if row["guest_rip"] is not None else (
            insn["rip"] if insn else None)
        chain = [{"vector": r["vector"], "name": VECTOR_NAMES.get(r["vector"]), "cpl": None,
                  "cs": None, "rip": None, "rsp": None, "cr2": None,
                  "error_code": hexstr(r["inj_error_code"]), "stack": None, "symbol": None,
                  "ts_ns": r["ts_ns"], "source": "kvm", "file": r["file"], "line": r["line"]}
                 for r in before.tail(3).iter_rows(named=True)]
        if insn:
            for e in chain:   # an injected exception of an emulated instruction: that rip
                e["rip"] = e["rip"] or hexstr(insn["rip"])
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


# -- symbols -------------------------------------------------------------------------------------

def _kaslr_offsets(events: pl.LazyFrame, names: set[str]) -> dict:
    """(console file, boot_index) -> the KASLR slide that boot printed; "last" -> the last one
    seen (for evidence without a boot of its own, such as a QEMU log of the same run)."""
    if "kaslr_offset" not in names:
        return {}
    boot = pl.col("boot_index") if "boot_index" in names else pl.lit(None, dtype=pl.Int32)
    rows = (events.filter(pl.col("kaslr_offset").is_not_null())
            .select("file", boot.alias("boot_index"), "kaslr_offset").collect())
    out: dict = {(r["file"], r["boot_index"]): int(r["kaslr_offset"]) for r in rows.to_dicts()}
    if rows.height:
        out["last"] = int(rows["kaslr_offset"][-1])
    return out


def _symbolizer(capture, offset: int):
    """ip -> ``func+0xoff`` from the ELF the capture names (``--vmlinux`` or an ELF TARGET),
    undoing the KASLR slide the console printed. A small stand-in for a shared symbol
    service: swap :func:`_symbol_table` for it when there is one."""
    paths = [p for p in [getattr(capture, "vmlinux", None), *_metas(capture, "elf"),
                         *_bundle_elves(capture)] if p]
    tables = [t for t in (_symbol_table(str(p)) for p in paths) if t]

    def lookup(ip, slide=None):
        if ip is None:
            return None
        offset_now = offset if slide is None else slide
        for addrs, entries in tables:
            for candidate in ((ip - offset_now) & 0xFFFFFFFFFFFFFFFF, ip) if offset_now else (ip,):
                i = bisect_right(addrs, candidate) - 1
                if i < 0:
                    continue
                start, size, name = entries[i]
                if candidate < start + max(size, 1) or (size == 0 and candidate - start < PAGE):
                    delta = candidate - start
                    return f"{name}+{delta:#x}" if delta else name
        return None
    return lookup


def _bundle_elves(capture) -> list[str]:
    """Executable ELF files a bundle carries (a lab bundle's kernel.elf): symbols for RIP."""
    out = []
    for manifest in getattr(capture, "bundles", None) or []:
        base = Path(manifest.get("path") or ".")
        for entry in manifest.get("files") or []:
            path = base / str(entry.get("path", ""))
            try:
                with open(path, "rb") as f:
                    head = f.read(18)
            except OSError:
                continue
            if head[:4] == b"\x7fELF" and len(head) == 18 and head[16] in (2, 3):
                out.append(str(path))
    return out


def _metas(capture, key: str) -> list:
    try:
        return list(capture.metas(key))
    except AttributeError:
        return []


@lru_cache(maxsize=8)
def _symbol_table(path: str):
    """Sorted (addresses, [(start, size, name)]) of an ELF's function and label symbols."""
    try:
        from elftools.elf.elffile import ELFFile
        from elftools.elf.sections import SymbolTableSection
        with open(path, "rb") as f:
            elf = ELFFile(f)
            entries = []
            for section in elf.iter_sections():
                if not isinstance(section, SymbolTableSection):
                    continue
                for sym in section.iter_symbols():
                    kind = sym["st_info"]["type"]
                    if kind not in ("STT_FUNC", "STT_NOTYPE") or not sym.name or \
                            sym["st_shndx"] == "SHN_UNDEF" or sym["st_value"] == 0:
                        continue
                    entries.append((sym["st_value"], sym["st_size"], sym.name))
    except Exception:    # not an ELF or unreadable: no symbols, the addresses still show
        return None
    entries.sort()
    return [e[0] for e in entries], entries


def _idt_gates(capture) -> dict[int, int]:
    """vector -> IST from the IDT in the capture: an ``idt`` meta (gates decoded from a
    memory dump) or a snapshot's ``idt``. Empty when the capture has none."""
    for gates in _metas(capture, "idt"):
        if gates:
            return {int(g["vector"]): int(g.get("ist") or 0) for g in gates if g.get("present", True)}
    for snap in _metas(capture, "snapshot"):
        gates = snap.get("idt") if isinstance(snap, dict) else None
        if gates:
            return {int(g["vector"]): int(g.get("ist") or 0) for g in gates if g.get("present", True)}
    return {}
