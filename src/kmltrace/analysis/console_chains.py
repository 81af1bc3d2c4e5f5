"""Fault chains from a serial console or dmesg: the kernel's own report of a double fault
(``PANIC: double fault``, ``BUG: stack guard page was hit``), oopses and panics, and a boot
banner after a boot that said nothing (a silent reset). See analysis/chains.py."""

from __future__ import annotations

import polars as pl

from kmltrace.analysis.chain_model import USER_TOP, starved_at
from kmltrace.analysis.chain_symbols import short_symbol
from kmltrace.analysis.incidents import Incident, evidence
from kmltrace.output import hexstr
from kmltrace.schema import DF_VECTOR, PF_VECTOR

CONSOLE_EVENTS = ("double_fault", "stack_overflow", "oops", "panic", "boot", "kernel_offset",
                  "halted")


_CONSOLE_COLUMNS = ("seq", "file", "line", "event", "vector", "cpu", "pid", "comm", "cs", "ss",
                    "ip", "rsp", "cr2", "error_code", "symbol", "stack_lo", "stack_hi",
                    "address", "boot_index", "ts_ns", "raw", "call_trace", "stack_type")


def console_episodes(events: pl.LazyFrame, names: set[str], symbolize, offsets: dict,
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
    symbol = symbolize(rip, head.get("boot_index")) or short_symbol(head.get("symbol"))
    cpl = None if head.get("cs") is None else head["cs"] & 3
    rsp = head.get("rsp")
    hidden = guard is not None and (guard.get("address") is None or _hashed(guard))
    # the faulting address: the guard page hit, else the CR2 the oops printed (at die time
    # that is the last fault's: the frame push that failed)
    fault = guard["address"] if guard is not None and not hidden else head.get("cr2")
    starved = starved_at(rsp, fault) if cpl == 0 else None
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
        what = ("The kernel stack"
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
