"""Incidents: what kmltrace concludes, with the evidence a user can open."""

from __future__ import annotations

from dataclasses import dataclass, field

from kmltrace.schema import INCIDENT_KINDS, SEVERITIES


def evidence(source: str, text: str, line: int | None = None, **extra) -> dict:
    """One evidence entry: the file (or source) it came from, the line, and its text."""
    out = {"source": source, "text": text}
    if line is not None:
        out["line"] = int(line)
    out.update({k: v for k, v in extra.items() if v is not None})
    return out


@dataclass
class Incident:
    kind: str
    summary: str
    severity: str | None = None          # default: CONTRACT.md's severity for the kind
    pid: int | None = None
    comm: str | None = None
    cpu: int | None = None
    ts_ns: int | None = None
    evidence: list[dict] = field(default_factory=list)
    explanation: str | None = None       # a paragraph in plain words
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in INCIDENT_KINDS:
            raise ValueError(f"unknown incident kind {self.kind!r}")
        if self.severity is None:
            self.severity = INCIDENT_KINDS[self.kind]
        if self.severity not in SEVERITIES:
            raise ValueError(f"unknown severity {self.severity!r}")

    def to_json(self) -> dict:
        out = {"kind": self.kind, "severity": self.severity, "summary": self.summary}
        for key in ("pid", "comm", "cpu", "ts_ns", "explanation"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        out["evidence"] = self.evidence
        out.update(self.extra)
        return out


def sort_incidents(incidents: list[Incident]) -> list[Incident]:
    """Most severe first, then by time (incidents without time last)."""
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    return sorted(incidents, key=lambda i: (rank[i.severity], i.ts_ns is None, i.ts_ns or 0))
