"""``build_report``: every analysis over a capture, as CONTRACT.md's report object; and its
renderers (rich tables, Markdown). ``--json`` prints the dict itself.

Report keys beyond CONTRACT.md (stable, the TUI reads them): ``kernel`` (KML or not, CPUs, the
IST layout used), ``merge`` (which source was counted where two recorded the same events),
``analyses`` (each analysis: ran, or which events it missed), ``stacks`` (deliveries per
vector, CPL and landing stack). Each process row also has ``image``, ``events``,
``first_ts_ns``/``last_ts_ns``, ``kml_faults``/``user_faults``, ``syscalls``, ``faults``
(by class, rates, repeats, stack growth), ``syscalls_by_id``, ``interrupts``, ``signals``.
"""

from __future__ import annotations

import importlib
import os

import polars as pl

from kmltrace.analysis import faults as faults_mod
from kmltrace.analysis import gs, inflight, landing, previous_boot, snapshot_checks, storms
from kmltrace.analysis.context import Context
from kmltrace.analysis.events import merge_notes
from kmltrace.analysis.incidents import Incident, evidence, sort_incidents
from kmltrace.analysis.modes import process_modes
from kmltrace.analysis.requirements import AnalysisStatus, Needs
from kmltrace.errors import MissingEventsError
from kmltrace.output import safe_text

FAULTS = ("page_fault_user", "page_fault_kernel", "exception")

#: analysis name -> the events it needs (LISA-style): the report says what is missing
NEEDS: dict[str, Needs] = {
    "modes": Needs(),
    "faults": Needs(any_of=(FAULTS,)),
    "landing": Needs(any_of=(FAULTS + ("hw_interrupt", "local_timer_entry"),)),
    "gs_write": Needs(all_of=("sys_enter",)),
    "gs_state": Needs(),
    "fault_storm": Needs(any_of=(FAULTS,)),
    "fault_loop": Needs(any_of=(FAULTS,)),
    "in_flight": Needs(),
    "chains": Needs(),
    "previous_boot": Needs(),
}


class _Runner:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.statuses: list[AnalysisStatus] = []

    def run(self, name: str, fn, default=None):
        missing = NEEDS[name].missing(self.ctx.available_events)
        if missing:
            error = MissingEventsError(f"{name} needs events that the capture lacks: "
                                       + ", ".join(missing))
            self.statuses.append(AnalysisStatus(name, False, missing, str(error)))
            return default
        try:
            result = fn()
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as e:  # one analysis's bug must not cost the others: say it, go on
            if os.environ.get("KMLTRACE_DEBUG"):
                raise
            self.statuses.append(AnalysisStatus(
                name, False, note=f"{name} failed: internal error {type(e).__name__}: {e}"))
            return default
        self.statuses.append(AnalysisStatus(name, True))
        return result


def build_report(capture, postmortem: bool = False, events: pl.LazyFrame | None = None,
                 unmerged: pl.LazyFrame | None = None) -> dict:
    """The report object of CONTRACT.md for `capture` (see module docstring for extra keys).

    `events` (already merged) or `unmerged` (conformed, e.g. a parquet scan) replace the
    capture's own events, for tables larger than memory.
    """
    ctx = Context.build(capture, events, unmerged)
    runner = _Runner(ctx)
    incidents: list[Incident] = []

    ctx.processes = runner.run("modes", lambda: process_modes(ctx))
    incidents += _kernel_mode_incidents(ctx.processes)
    classified = runner.run("faults", lambda: faults_mod.classified_faults(ctx).collect())
    summary = faults_mod.fault_summary(ctx, classified.lazy()) if classified is not None else None
    activity = faults_mod.activity_counts(ctx)
    stacks = []

    def run_landing():
        landed = landing.landings(ctx).collect()
        stacks.extend(landing.landing_counts(landed))
        # no faults analysed: an empty table of the same shape (never a narrower one)
        fault_rows = classified if classified is not None else pl.DataFrame(
            schema=landing.FAULT_ROW_SCHEMA)
        return landing.landing_incidents(ctx, landed, fault_rows)

    incidents += runner.run("landing", run_landing, []) or []
    incidents += landing.ist_missing_incidents(ctx)
    incidents += snapshot_checks.snapshot_task_incidents(capture)
    incidents += runner.run("gs_write", lambda: gs.gs_incidents(ctx), []) or []
    incidents += runner.run("gs_state", lambda: gs.cpu_state_gs_incidents(ctx), []) or []
    incidents += runner.run("fault_storm", lambda: storms.storm_incidents(ctx), []) or []
    incidents += runner.run("fault_loop", lambda: storms.loop_incidents(ctx), []) or []
    in_flight = runner.run("in_flight", lambda: inflight.in_flight(ctx), [])
    chain_result = _run_chains(ctx, runner)
    if chain_result is not None:
        incidents += list(getattr(chain_result, "incidents", []) or [])
    # a last_boot bundle (kmltrace.collectors.boot_trace): how the previous boot ended
    previous = runner.run("previous_boot",
                          lambda: previous_boot.analyse(ctx, in_flight or [], incidents))
    if previous is not None:
        incidents += previous.incidents

    report = {
        "inputs": [p.summary() for p in capture.inputs],
        "kernel": ctx.kernel.to_json(),
        "merge": [n.to_json() for n in merge_notes(capture)],
        "analyses": [s.to_json() for s in runner.statuses],
        "processes": _process_rows(ctx.processes, summary, activity),
        "incidents": [i.to_json() for i in sort_incidents(incidents)],
        "in_flight": in_flight,
        "stacks": stacks,
    }
    if previous is not None:
        report["previous_boot"] = previous.section
    if postmortem:
        chains = list(getattr(chain_result, "chains", []) or []) if chain_result else []
        report["chains"] = chains
        report["chain"] = chains[-1] if chains else []
    return report


def _run_chains(ctx, runner):
    try:
        chains = importlib.import_module("kmltrace.analysis.chains")
    except ImportError:
        runner.statuses.append(AnalysisStatus("chains", False, note="not available in this build"))
        return None
    return runner.run("chains", lambda: chains.analyse_chains(ctx.string_events(), ctx.capture))


def _kernel_mode_incidents(processes: pl.DataFrame | None) -> list[Incident]:
    if processes is None:
        return []
    out = []
    for r in processes.filter(pl.col("mode") == "kernel").iter_rows(named=True):
        out.append(Incident(
            "kernel_mode_process",
            (f"{r['comm']} ({r['pid']}) ran in kernel mode" if r["pid"] is not None
             else "code without a pid ran at CPL 0 on a user-range stack")
            + (f": {r['exe']}" if r["exe"] else ""),
            pid=r["pid"], comm=r["comm"], ts_ns=r["first_ts"],
            evidence=[evidence("analysis", e) for e in r["evidence"]],
            extra={"image": r["image"]}))
    return out


def _process_rows(processes, summary, activity) -> list[dict]:
    if processes is None:
        return []
    frame = processes
    if summary is not None and summary.height:
        frame = frame.join(summary, on=["pid", "image"], how="left", nulls_equal=True)
    rows = []
    for r in frame.iter_rows(named=True):
        row = {"pid": r["pid"], "tgid": r["tgid"], "comm": r["comm"], "exe": r["exe"],
               "mode": r["mode"], "evidence": r["evidence"], "page_faults": r["page_faults"],
               "image": r["image"], "events": r["events"], "first_ts_ns": r["first_ts"],
               "last_ts_ns": r["last_ts"], "kml_faults": r["kml_faults"],
               "user_faults": r["user_faults"], "syscalls": r["syscalls"]}
        if r.get("faults"):
            row["faults"] = {
                "by_class": {k: r[f"faults_{k}"] for k in faults_mod.FAULT_CLASSES
                             if r[f"faults_{k}"]},
                "rate_per_s": _round(r["rate_per_s"]), "peak_per_s": _round(r["peak_per_s"]),
                "repeated_addresses": r["repeated_addresses"] or 0,
                "max_repeats_at_one_address": r["max_repeats_at_one_address"] or 0,
                "stack_growth": r["stack_growth"]}
        row.update(activity.get((r["pid"], r["image"]), {}))
        if r["mode"] == "kernel":
            # KML turns a kernel-mode process's syscall instructions into direct calls of the
            # handlers: whether raw_syscalls fire on that path is not verified on a KML kernel
            row["syscall_path"] = "KML direct call (raw_syscalls coverage unverified)"
        rows.append({k: v for k, v in row.items() if v is not None or k in ("pid", "mode")})
    return rows


def _round(value):
    return None if value is None else round(float(value), 1)


# -- renderers -----------------------------------------------------------------------------------

SEVERITY_STYLE = {"critical": "bold red", "error": "red", "warning": "yellow", "info": "cyan"}
MODE_STYLE = {"kernel": "bold magenta", "user": "green", "kthread": "blue", "unknown": "dim"}


def render_rich(report: dict, console) -> None:
    """Tables for a terminal; every kernel string goes through rich Text (never markup)."""
    from rich.table import Table
    from rich.text import Text

    def t(value, style=None):
        return Text(safe_text(value) if value is not None else "", style=style or "")

    kernel = report.get("kernel") or {}
    console.print(t(f"kernel: {kernel.get('release') or 'unknown release'}, "
                    f"KML: {kernel.get('kml')}, CPUs: {kernel.get('cpus')}, "
                    f"IST: {kernel.get('ist_source')}"))
    for note in report.get("merge", []):
        console.print(t(f"{note['duplicates']} events recorded by both {note['counted']} and "
                        f"{note['dropped_from']}: counted from {note['counted_source']}"))
    inputs = Table(title="Inputs")
    for col in ("path", "format", "events", "errors"):
        inputs.add_column(col)
    for i in report["inputs"]:
        inputs.add_row(t(i["path"]), t(i["format"]), t(str(i["events"])),
                       t("; ".join(i["errors"]), "red"))
    console.print(inputs)

    incidents = Table(title=f"Incidents ({len(report['incidents'])})")
    for col in ("severity", "kind", "pid", "comm", "summary"):
        incidents.add_column(col)
    for i in report["incidents"]:
        incidents.add_row(t(i["severity"], SEVERITY_STYLE.get(i["severity"])), t(i["kind"]),
                          t(i.get("pid")), t(i.get("comm")), t(i["summary"]))
    console.print(incidents)
    _render_chains(report, console, t)
    for i in report["incidents"]:
        if i.get("explanation") and i["severity"] in ("critical", "error"):
            console.print(t(f"{i['kind']}: ", "bold") + t(i["explanation"]))

    procs = Table(title=f"Processes ({len(report['processes'])})")
    for col in ("pid", "img", "comm", "exe", "mode", "faults", "syscalls"):
        procs.add_column(col, overflow="fold" if col in ("comm", "exe") else "ellipsis",
                         min_width={"comm": 12, "mode": 7, "exe": 12, "syscalls": 8}.get(col))
    # the first piece of evidence, on one line (--json and --markdown have all of it)
    procs.add_column("evidence", no_wrap=True, overflow="ellipsis", max_width=34)
    for p in report["processes"]:
        procs.add_row(t(p["pid"]), t(p.get("image", 0)), t(p.get("comm")), t(p.get("exe")),
                      t(p["mode"], MODE_STYLE.get(p["mode"])), t(p["page_faults"]),
                      t(p.get("syscalls", 0)), t((p.get("evidence") or [""])[0]))
    console.print(procs)

    faults = Table(title="Page faults per process")
    for col in ("pid", "comm", "faults", *faults_mod.FAULT_CLASSES, "rate/s", "peak/s",
                "repeated addr", "stack growth"):
        faults.add_column(col)
    for p in report["processes"]:
        f = p.get("faults")
        if not f:
            continue
        by = f["by_class"]
        faults.add_row(t(p["pid"]), t(p.get("comm")), t(p["page_faults"]),
                       *[t(by.get(k, 0)) for k in faults_mod.FAULT_CLASSES],
                       t(_int_or_none(f.get("rate_per_s"))), t(_int_or_none(f.get("peak_per_s"))),
                       t(f["repeated_addresses"]), t(f["stack_growth"]))
    console.print(faults)

    flight = Table(title="In flight at the end of the capture")
    for col in ("cpu", "pid", "what", "ts_ns"):
        flight.add_column(col)
    for f in report.get("in_flight", []):
        if f.get("on_cpu", True):
            flight.add_row(t(f["cpu"]), t(f.get("pid")), t(f["what"]), t(f.get("ts_ns")))
    console.print(flight)
    if report.get("previous_boot"):
        previous_boot.render_rich(report["previous_boot"], console)
    for a in report.get("analyses", []):
        if not a["ran"]:
            console.print(t(f"not run: {a.get('note') or a['name']}", "yellow"))


def _render_chains(report: dict, console, t) -> None:
    """Each fault episode as the CPU saw it, one exception a row, the reset last."""
    from rich.table import Table

    for number, chain in enumerate(report.get("chains") or [], 1):
        table = Table(title=f"Fault chain {number}")
        for col in ("#", "exception", "CPL", "CS:RIP", "symbol", "SS:RSP", "CR2", "error",
                    "stack"):
            # an address cut short is worse than one that wraps
            table.add_column(col, overflow="fold", no_wrap=col in ("#", "CPL"))
        for step, e in enumerate(chain, 1):
            stack = e.get("stack") or ("not delivered" if e.get("delivered") is False else "?")
            table.add_row(t(step), t(f"{e.get('name')} ({e.get('vector')})"), t(e.get("cpl")),
                          t(f"{e.get('cs') or '?'}:{e.get('rip') or '?'}"), t(e.get("symbol")),
                          t(f"{e.get('ss') or '?'}:{e.get('rsp') or '?'}"), t(e.get("cr2")),
                          t(e.get("error_code")), t(stack))
        if chain and chain[-1].get("shutdown"):
            table.add_row(t(""), t("RESET", "bold red"), *[t("") for _ in range(7)])
        console.print(table)


def _int_or_none(value):
    return None if value is None else int(value)


def _md(value) -> str:
    text = safe_text("" if value is None else value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`").replace("\n", " ")


def render_markdown(report: dict) -> str:
    """The report as Markdown, for pasting into a bug report."""
    kernel = report.get("kernel") or {}
    lines = ["# kmltrace report", "",
             f"Kernel: {_md(kernel.get('release'))}, KML: {kernel.get('kml')}, "
             f"CPUs: {kernel.get('cpus')}, IST layout: {_md(kernel.get('ist_source'))}", ""]
    for note in report.get("merge", []):
        lines += [f"{note['duplicates']} events recorded by both {_md(note['counted'])} and "
                  f"{_md(note['dropped_from'])}: counted from {note['counted_source']} "
                  f"(clock offset {note['clock_offset_ns']} ns from {note['anchors']} anchors)", ""]
    lines += ["## Inputs", "", "| path | format | events | errors |", "|---|---|---|---|"]
    for i in report["inputs"]:
        lines.append(f"| {_md(i['path'])} | {_md(i['format'])} | {i['events']} | "
                     f"{_md('; '.join(i['errors']))} |")
    lines += ["", f"## Incidents ({len(report['incidents'])})", ""]
    if report["incidents"]:
        lines += ["| severity | kind | pid | comm | summary |", "|---|---|---|---|---|"]
        for i in report["incidents"]:
            lines.append(f"| {i['severity']} | {i['kind']} | {_md(i.get('pid'))} | "
                         f"{_md(i.get('comm'))} | {_md(i['summary'])} |")
    else:
        lines.append("None.")
    lines += ["", "## Processes", "", "| pid | image | comm | exe | mode | page faults | "
              "syscalls | evidence |", "|---|---|---|---|---|---|---|---|"]
    for p in report["processes"]:
        lines.append(f"| {p['pid']} | {p.get('image', 0)} | {_md(p.get('comm'))} | "
                     f"{_md(p.get('exe'))} | {p['mode']} | {p['page_faults']} | "
                     f"{p.get('syscalls', 0)} | {_md('; '.join(p.get('evidence') or []))} |")
    flight = [f for f in report.get("in_flight", []) if f.get("on_cpu", True)]
    if flight:
        lines += ["", "## In flight at the end", "", "| cpu | pid | what |", "|---|---|---|"]
        lines += [f"| {f['cpu']} | {_md(f.get('pid'))} | {_md(f['what'])} |" for f in flight]
    if report.get("previous_boot"):
        lines += ["", previous_boot.render_markdown(report["previous_boot"])]
    for number, chain in enumerate(report.get("chains") or [], 1):
        lines += ["", f"## Chain {number}", "", "| # | exception | cpl | rip | rsp | cr2 | stack |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {i} | {_md(e.get('name'))} | {_md(e.get('cpl'))} | {_md(e.get('rip'))} | "
                  f"{_md(e.get('rsp'))} | {_md(e.get('cr2'))} | {_md(e.get('stack'))} |"
                  for i, e in enumerate(chain, 1)]
    skipped = [a for a in report.get("analyses", []) if not a["ran"]]
    if skipped:
        lines += ["", "## Not run", ""] + [f"- {_md(a.get('note') or a['name'])}" for a in skipped]
    return "\n".join(lines) + "\n"
