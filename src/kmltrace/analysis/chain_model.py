"""What the chain analyses share: the result type and the rule for a frame that cannot be
pushed (CR2 just below RSP)."""

from __future__ import annotations

from dataclasses import dataclass, field

from kmltrace.analysis.incidents import Incident

#: the frame a 64-bit CPU pushes (SS, RSP, RFLAGS, CS, RIP, error code) plus the 16-byte
#: alignment it applies first: a fault this far below RSP is the frame's own push
FRAME_BYTES = 64
PAGE = 4096
USER_TOP = 0x0000_8000_0000_0000


@dataclass
class ChainResult:
    chains: list[list[dict]] = field(default_factory=list)
    incidents: list[Incident] = field(default_factory=list)


def starved_at(rsp: int | None, cr2: int | None) -> str | None:
    """``frame`` when CR2 lies in the frame below RSP, ``page`` when CR2 is on the page the
    frame's first push goes to (RSP itself points into missing memory), else None."""
    if rsp is None or cr2 is None:
        return None
    if 0 < rsp - cr2 <= FRAME_BYTES:
        return "frame"
    if cr2 // PAGE == (rsp - 8) // PAGE:
        return "page"
    return None
