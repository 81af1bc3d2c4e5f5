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

import polars as pl

from kmltrace.analysis.chain_model import USER_TOP, ChainResult, starved_at
from kmltrace.analysis.chain_symbols import idt_gates, kaslr_offsets, symbolizer
from kmltrace.analysis.console_chains import console_episodes
from kmltrace.analysis.incidents import Incident, evidence
from kmltrace.analysis.kvm import kvm_episodes
from kmltrace.analysis.stacks import landing_stack
from kmltrace.output import hexstr
from kmltrace.schema import DF_VECTOR, PF_VECTOR, VECTOR_NAMES

LOOP_MIN_REPEATS = 32


def analyse_chains(events: pl.LazyFrame, capture) -> ChainResult:
    """The fault chains and their incidents (triple_fault, double_fault, stack_starvation,
    oops) from the QEMU, console and KVM evidence in `events`."""
    result = ChainResult()
    names = set(events.collect_schema().names())
    offsets = kaslr_offsets(events, names)
    symbolize = symbolizer(capture, offsets.get("last", 0))
    gates = idt_gates(capture)
    for frame in _qemu_files(events, names):
        _qemu_episodes(frame, gates, symbolize, result)
    console_episodes(events, names, symbolize, offsets, result)
    kvm_episodes(events, symbolize, result)
    _final_state(capture, symbolize, result)
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
                    and not starved_at(_int(cpf["rsp"]), _int(qpf["cr2"]))):
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
                 "in_asm", "cr0")


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
    after_triple = False
    for row in rows:
        event = row["event"]
        if event != "cpu_reset":
            after_triple = event == "triple_fault"
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
        elif event == "cpu_reset" and not after_triple and (row.get("cr0") or 0) & 1:
            # QEMU dumped a CPU that was running in protected mode when it was reset: under
            # KVM, where -d int logs nothing, that dump is the CPU's last state
            _reset_dump_episode(row, symbolize, result)
    if pending:
        _close_qemu(pending, None, gates, symbolize, result)


def _final_state(capture, symbolize, result: ChainResult) -> None:
    """A shutdown the host saw (KVM: no -d int) plus the CPU state in the guest memory dump
    taken after it (QEMU paused at the shutdown): when that state is CPL 0 with CR2 just below
    RSP, the #PF that could not push its frame is the start of the chain."""
    try:
        states = [s for group in capture.metas("cpu_state") for s in (group or [])]
    except AttributeError:
        return
    shutdowns = [c for c in result.chains
                 if c and c[-1].get("shutdown") and c[-1].get("source") == "kvm"]
    if not states or not shutdowns:
        return
    for state in states:
        rsp, cr2 = _int(state.get("rsp")), _int(state.get("cr2"))
        if state.get("cpl") != 0 or not starved_at(rsp, cr2):
            continue
        rip = _int(state.get("rip"))
        chain = shutdowns[-1]
        pf = {"vector": PF_VECTOR, "name": "#PF", "cpl": 0, "cs": state.get("cs"),
              "rip": hexstr(rip), "rsp": hexstr(rsp), "cr2": hexstr(cr2), "error_code": None,
              "stack": "same", "symbol": symbolize(rip), "ts_ns": None, "delivered": False,
              "inferred": True, "source": "vmcore",
              "stack_evidence": "the guest memory dump's CPU state after the shutdown: CPL 0, "
                                "CR2 just below RSP"}
        if chain[0]["vector"] == PF_VECTOR:
            # the #PF KVM injected is that fault: give it the state, keep its host evidence
            first = chain[0]
            for key in ("cpl", "cs", "rsp", "cr2", "stack", "stack_evidence"):
                first[key] = pf[key]
            first["rip"] = first["rip"] or pf["rip"]
            first["symbol"] = first["symbol"] or pf["symbol"]
            first["delivered"] = False
            first["state_from"] = "vmcore"
        else:
            chain.insert(0, pf)
        chain_no = result.chains.index(chain)
        result.incidents.append(Incident(
            "stack_starvation",
            f"#PF at CPL 0 could not push its frame: CR2 {hexstr(cr2)} is {_relative(rsp - cr2)} "
            f"RSP {hexstr(rsp)} in the CPU state the guest memory dump kept after the shutdown; "
            "it led to a reset",
            severity="critical", cpu=state.get("cpu"),
            evidence=[evidence("vmcore", f"CPU {state.get('cpu')}: CPL 0, RIP {hexstr(rip)}, "
                                         f"RSP {hexstr(rsp)}, CR2 {hexstr(cr2)}")],
            explanation=(
                f"The host saw the guest CPU shut down, and the CPU state QEMU kept (CPL 0, RIP "
                f"{symbolize(rip) or hexstr(rip)}, RSP {hexstr(rsp)}, CR2 {hexstr(cr2)}) is that "
                "of a page fault whose own frame could not be pushed: the fault address is "
                "just below the stack pointer"
                + (", on a user-range stack as a Kernel Mode Linux process has" if rsp < USER_TOP
                   else "") + ". With no IST on the #PF and #DF gates both frames go to the "
                "same missing stack and the third fault shuts the CPU down."),
            extra={"chain": chain_no, "rsp": hexstr(rsp), "cr2": hexstr(cr2),
                   "user_range_stack": rsp < USER_TOP}))
        return


def _reset_dump_episode(row: dict, symbolize, result: ChainResult) -> None:
    rsp, cr2, cpl = row.get("rsp"), row.get("cr2"), row.get("cpl")
    times = f" ({row['repeats']} times, each the same state)" if row["repeats"] > 1 else ""
    reset = {"vector": None, "name": "reset", "cpl": cpl, "cs": hexstr(row.get("cs")),
             "rip": hexstr(row.get("ip")), "rsp": hexstr(rsp), "cr2": hexstr(cr2),
             "error_code": None, "stack": None, "symbol": symbolize(row.get("ip")),
             "ts_ns": row.get("ts_ns"), "shutdown": True, "source": "qemu",
             "file": row["file"], "line": row["line"], "from_reset_dump": True}
    if row["repeats"] > 1:
        reset["repeats"] = row["repeats"]
    proof = [_ev(row, f"CPU Reset dump{times}: CPL {cpl}, RIP {hexstr(row.get('ip'))}, "
                      f"RSP {hexstr(rsp)}, CR2 {hexstr(cr2)}")]
    where = f" at {reset['symbol'] or reset['rip']}"
    if cpl == 0 and starved_at(rsp, cr2):
        pf = {**reset, "vector": PF_VECTOR, "name": "#PF", "stack": "same", "delivered": False,
              "inferred": True, "shutdown": False,
              "stack_evidence": "the CPU was reset at CPL 0 with CR2 just below RSP: the #PF "
                                "frame could not be pushed"}
        result.chains.append([pf, reset])
        chain_no = len(result.chains) - 1
        result.incidents.append(Incident(
            "triple_fault",
            f"CPU {row.get('cpu')} was reset while running at CPL 0{where} with CR2 "
            f"{hexstr(cr2)} {_relative(rsp - cr2)} RSP {hexstr(rsp)}{times}: a triple fault "
            "(QEMU's reset dump; under KVM -d int logs nothing else)",
            cpu=row.get("cpu"), evidence=proof, extra={"chain": chain_no}))
        result.incidents.append(Incident(
            "stack_starvation",
            f"#PF at CPL 0 could not push its frame: CR2 {hexstr(cr2)} is {_relative(rsp - cr2)} "
            f"RSP {hexstr(rsp)} in the state QEMU dumped at the reset; it led to a reset",
            severity="critical", cpu=row.get("cpu"), evidence=proof,
            explanation=(
                f"When QEMU reset the CPU it was at CPL 0{where}, its last page fault address "
                f"(CR2 {hexstr(cr2)}) {_relative(rsp - cr2)} the stack pointer {hexstr(rsp)}"
                + (", a user-range stack as a Kernel Mode Linux process has" if rsp < USER_TOP
                   else "") + ". That is the state a CPU is left in when a page fault's own "
                "frame cannot be pushed: with no IST on the #PF and #DF gates both frames go "
                "to the same missing stack and the third fault shuts the CPU down. On Kernel "
                "Mode Linux a kernel-mode process's faults arrive at CPL 0 on its own stack "
                "unless the gate has an IST entry."),
            extra={"chain": chain_no, "rsp": hexstr(rsp), "cr2": hexstr(cr2),
                   "user_range_stack": rsp < USER_TOP}))
        return
    result.chains.append([reset])
    result.incidents.append(Incident(
        "unclean_reset",
        f"QEMU reset CPU {row.get('cpu')} while it ran in protected mode (CPL {cpl}{where})"
        f"{times}: a triple fault or a reset the guest asked for; the console or the host's "
        "kvm events tell which",
        cpu=row.get("cpu"), evidence=proof, extra={"chain": len(result.chains) - 1}))


def _starved(row: dict) -> str | None:
    """Why a CPL 0 #PF could not push its frame, or None: ``frame`` when CR2 lies in the
    frame below RSP, ``page`` when CR2 is on the page the frame's first push goes to (RSP
    itself points into missing memory)."""
    if row.get("cpl") != 0 or row.get("vector") != PF_VECTOR:
        return None
    return starved_at(row.get("rsp"), row.get("cr2"))


def _close_qemu(chain: list[dict], triple: dict | None, gates, symbolize, result: ChainResult,
                reset: dict | None = None) -> None:
    vectors = [r["vector"] for r in chain]
    below_rsp = [r for r in chain if _starved(r)]
    looped = bool(chain) and chain[-1]["repeats"] >= LOOP_MIN_REPEATS
    escalated = len(chain) > 1
    if not (triple or reset or DF_VECTOR in vectors or below_rsp or looped or escalated):
        return                                   # delivered and handled: not an episode
    exceptions, failed_lines = [], set()
    for i, row in enumerate(chain):
        nested_next = i + 1 < len(chain) and chain[i + 1]["prev_vector"] == row["vector"]
        failed = nested_next or (triple is not None and i == len(chain) - 1)
        if failed:
            failed_lines.add(row["line"])
        exceptions.append(_qemu_exception(row, gates, symbolize, delivered=not failed))
    # starvation: the frame could not be pushed (its delivery faulted), or the fault repeats
    # forever. A #PF delivered once, its frame on another stack (an IST), after which the
    # instruction did not fault again, was handled: the stack grew, as on a KML kernel whose
    # #PF gate has an IST; that is the chain's story, not an incident.
    starved = [r for r in below_rsp if r["line"] in failed_lines
               or r["repeats"] >= LOOP_MIN_REPEATS]
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


def _relative(below: int) -> str:
    """CR2's place against RSP in words."""
    if below > 0:
        return f"{below} bytes below"
    return "on the unmapped page RSP points into, at or above"


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
        f"At CPL 0 the instruction at {where} touched {hexstr(cr2)}, {_relative(below)} the "
        f"stack pointer {hexstr(rsp)}"
        + (", a user-range stack as a Kernel Mode Linux process has" if user_stack else "")
        + ": that memory was not there, so the CPU raised a page fault (#PF)."]
    gates = [f"{e['name']} {e['stack_evidence'][len('IDT '):]}" for e in exceptions
             if (e.get("stack_evidence") or "").startswith("IDT gate")]
    if gates:
        text.append("The IDT in the capture (the guest memory dump or a snapshot) says: "
                    + "; ".join(dict.fromkeys(gates)) + ".")
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
            "The CPU turned that into a double fault (#DF), which was delivered"
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
    where_logged = f"({(row['file'] or 'qemu').rsplit('/', 1)[-1]}:{row['line']})"
    if exc["delivered"]:
        # a loop: each #PF was delivered (its frame went elsewhere) but the stack never grew
        on = f" on {exc['stack']}" if exc["stack"] and exc["stack"] != "same" else ""
        summary = (f"#PF at CPL 0 on a missing stack page (CR2 {hexstr(cr2)} is "
                   f"{_relative(below)} RSP {hexstr(rsp)}) {where_logged} repeated "
                   f"{row['repeats']} times: delivered{on}, the stack never grew; no reset")
    else:
        summary = (f"#PF at CPL 0 could not push its frame: CR2 {hexstr(cr2)} is "
                   f"{_relative(below)} RSP {hexstr(rsp)} {where_logged}"
                   + ("; it led to a reset" if ended else "; survived (delivered on another stack)"
                      if df is not None or exc["stack"] not in (None, "same") else "; no reset"))
    return Incident("stack_starvation", summary, severity=severity, cpu=row.get("cpu"),
                    evidence=proof, explanation=" ".join(text),
                    extra={"chain": chain_no, "rsp": hexstr(rsp), "cr2": hexstr(cr2),
                           "user_range_stack": user_stack})


# -- console --------------------------------------------------------------------------------------


# -- KVM -----------------------------------------------------------------------------------------


# -- symbols -------------------------------------------------------------------------------------


