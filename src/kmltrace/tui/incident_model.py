"""Incidents as the screens list them: sorting, filtering, their exception chain, and the
formatting of times and vectors. Plain Python (no polars), imported by the first screen."""

from __future__ import annotations


def format_ts(ns) -> str:
    """Nanoseconds as ftrace prints seconds (``12345.678901234``); empty when unknown."""
    if ns is None:
        return ""
    ns = int(ns)
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    return f"{sign}{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


def vector_name(vector) -> str:
    from kmltrace.schema import VECTOR_NAMES   # schema imports polars: not at module level

    if vector is None:
        return "?"
    return VECTOR_NAMES.get(int(vector), f"vec{int(vector)}")


# -- incidents -----------------------------------------------------------------------------------

SEVERITY_ORDER = {"critical": 0, "error": 1, "warning": 2, "info": 3}


def incident_chain(report: dict, incident: dict) -> list[dict]:
    """The exception chain that goes with `incident`: its own ``chain`` if it carries one,
    else for resets and double faults the report's chain closest in time."""
    own = incident.get("chain")
    if isinstance(own, list):
        return own
    chains = report.get("chains") or []
    if isinstance(own, int) and not isinstance(own, bool) and 0 <= own < len(chains):
        return chains[own]          # an index into the report's chains
    if incident.get("kind") not in ("triple_fault", "double_fault", "stack_starvation",
                                    "fault_loop", "unclean_reset"):
        return []
    chains = [c for c in chains if c]
    if not chains:
        return list(report.get("chain") or [])
    ts = incident.get("ts_ns")
    if ts is None:
        return list(report.get("chain") or chains[-1])

    def distance(chain):
        times = [e.get("ts_ns") for e in chain if e.get("ts_ns") is not None]
        return min((abs(t - ts) for t in times), default=1 << 62)

    return min(chains, key=distance)


def chain_ends_in_reset(incident: dict, chain: list[dict]) -> bool:
    return incident.get("kind") in ("triple_fault", "unclean_reset") or any(
        e.get("reset") or e.get("shutdown") for e in chain)


def filter_incidents(incidents: list[dict], text: str) -> list[dict]:
    """Incidents matching ``kind=K severity=S pid=N`` words (comma lists allowed) and any
    other words as text the summary must contain (case-insensitive)."""
    wanted: dict[str, set[str]] = {}
    words: list[str] = []
    for word in text.split():
        key, sep, value = word.partition("=")
        if sep and key in ("kind", "severity", "pid", "cpu", "comm"):
            wanted.setdefault(key, set()).update(value.split(","))
        else:
            words.append(word.lower())
    out = []
    for incident in incidents:
        if any(str(incident.get(k)) not in values for k, values in wanted.items()):
            continue
        summary = str(incident.get("summary", "")).lower()
        if any(w not in summary for w in words):
            continue
        out.append(incident)
    return out


INCIDENT_SORT_KEYS = ("severity", "kind", "time", "pid", "comm", "summary")


def sort_incidents(incidents: list[dict], key: str, reverse: bool = False) -> list[dict]:
    def value(incident):
        if key == "severity":
            return (SEVERITY_ORDER.get(incident.get("severity"), 9), incident.get("ts_ns") or 0)
        if key == "time":
            ts = incident.get("ts_ns")
            return (ts is None, ts or 0)
        if key == "pid":
            pid = incident.get("pid")
            return (pid is None, pid or 0)
        return (str(incident.get(key) or ""),)
    return sorted(incidents, key=value, reverse=reverse)
