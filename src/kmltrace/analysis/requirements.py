"""Each analysis declares the events it needs; when they are missing it says which, by name.

In the spirit of LISA's ``@requires_events``: an analysis that cannot run is not silently
empty, the report lists it with the missing events so the user knows what to enable.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from kmltrace.errors import MissingEventsError


@dataclass(frozen=True)
class Needs:
    """Events (``system:event`` or bare ``event`` names) an analysis needs.

    ``all_of``: every one must be present; ``any_of``: groups of which at least one member
    must be present (e.g. page faults from ftrace *or* exception records from QEMU).
    """

    all_of: tuple[str, ...] = ()
    any_of: tuple[tuple[str, ...], ...] = ()

    def missing(self, available: set[str]) -> list[str]:
        out = [name for name in self.all_of if not _present(name, available)]
        for group in self.any_of:
            if not any(_present(name, available) for name in group):
                out.append(" or ".join(group))
        return out


def _present(name: str, available: set[str]) -> bool:
    return name in available


@dataclass
class AnalysisStatus:
    """What the report says about one analysis: did it run, and if not, what was missing."""

    name: str
    ran: bool
    missing: list[str] = field(default_factory=list)
    note: str | None = None

    def to_json(self) -> dict:
        out = {"name": self.name, "ran": self.ran}
        if self.missing:
            out["missing"] = self.missing
        if self.note:
            out["note"] = self.note
        return out


def requires_events(*all_of: str, any_of: tuple[tuple[str, ...], ...] = ()):
    """Decorate ``fn(ctx, ...)``: raise MissingEventsError naming what ``ctx`` lacks.

    ``ctx.available_events`` is the set of ``event`` and ``system:event`` names present.
    """
    needs = Needs(tuple(all_of), tuple(any_of))

    def wrap(fn):
        @functools.wraps(fn)
        def run(ctx, *args, **kwargs):
            missing = needs.missing(ctx.available_events)
            if missing:
                raise MissingEventsError(f"{fn.__name__} needs events that the capture lacks: "
                                         + ", ".join(missing))
            return fn(ctx, *args, **kwargs)

        run.needs = needs
        return run

    return wrap
