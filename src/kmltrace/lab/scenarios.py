"""The lab's scenarios: what each kernel does and what its run must show.

The numbers (addresses, vectors, error codes) come from the kernel's own header ``lab.h``,
read here, and the instruction addresses from the labels of ``kernel.S`` (symbols of the built
ELF), so a test compares the analysis with the source, never with itself.
"""

from __future__ import annotations

import ast
import operator
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from kmltrace.lab.build import SOURCE_DIR

_DEFINE = re.compile(r"^#define\s+(\w+)\s+(.+?)\s*(?:/\*.*\*/)?\s*$")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.FloorDiv: operator.floordiv, ast.LShift: operator.lshift, ast.BitOr: operator.or_}


def _evaluate(node: ast.AST, names: dict[str, int]) -> int:
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_evaluate(node.left, names), _evaluate(node.right, names))
    raise ValueError(f"lab.h: unsupported expression {ast.dump(node)}")


@lru_cache(maxsize=1)
def constants() -> dict[str, int]:
    """Every ``#define`` of lab.h, evaluated: ``{"STARVE_RSP": 0x7fffffffe000, ...}``."""
    names: dict[str, int] = {}
    for line in (SOURCE_DIR / "lab.h").read_text().splitlines():
        match = _DEFINE.match(line)
        if match:
            expr = match.group(2).replace("/", "//")
            names[match.group(1)] = _evaluate(ast.parse(expr, mode="eval").body, names)
    return names


@dataclass(frozen=True)
class Scenario:
    name: str
    define: str                 # the SC_... name in lab.h that selects its code in kernel.S
    description: str
    reset: bool                 # the run ends in a triple fault
    vectors: tuple[int, ...]    # the exceptions (and interrupts) the CPU takes, in order
    gates: dict = field(default_factory=dict)   # vector -> IST index the kernel gives its gate
    incidents: tuple[str, ...] = ()             # incident kinds the analysis must report
    absent: tuple[str, ...] = ()                # incident kinds it must not report
    facts: dict = field(default_factory=dict)   # expected register values and labels
    serial: str = ""            # regex of the kernel's own self-check line on the console
    timeout: float = 10.0       # seconds before the runner stops QEMU
    log_cap: int = 4 << 20      # bytes of QEMU log before the runner stops QEMU

    def to_json(self) -> dict:
        return {"name": self.name, "description": self.description, "reset": self.reset,
                "vectors": list(self.vectors), "gates": {str(k): v for k, v in self.gates.items()},
                "incidents": list(self.incidents), "absent": list(self.absent),
                "facts": {k: (f"{v:#x}" if isinstance(v, int) and not isinstance(v, bool)
                              and k not in ("cpl",) else v) for k, v in self.facts.items()},
                "serial": self.serial}


def _scenarios() -> list[Scenario]:
    c = constants()
    starve = {"cpl": 0, "rsp": c["STARVE_RSP"], "cr2": c["STARVE_CR2"],
              "error_code": c["STARVE_PF_ERROR"], "rip_symbol": "starve_push"}
    ist = c["IST_INDEX"]
    timer = c["TIMER_VECTOR"]
    return [
        Scenario("starvation", "SC_STARVATION",
                 "CPL 0 code on a user-range stack pushes below its mapped page; #PF and #DF "
                 "have no IST, so neither frame can be pushed: triple fault, reset",
                 reset=True, vectors=(14, 8), gates={14: 0, 8: 0},
                 incidents=("triple_fault", "stack_starvation"),
                 absent=("redzone_clobber",),     # neither frame was ever pushed
                 facts=starve),
        Scenario("pf-ist", "SC_PF_IST",
                 "the same push, but the #PF gate uses IST 1: the frame goes on the IST stack, "
                 "the handler maps the page and the push completes; no reset",
                 reset=False, vectors=(14,), gates={14: ist, 8: 0},
                 absent=("triple_fault", "double_fault", "redzone_clobber"), facts=starve,
                 serial=r"lab: push completed on a grown stack"),
        Scenario("df-ist", "SC_DF_IST",
                 "the same push, #PF without IST (its frame cannot be pushed) and #DF on IST 1 "
                 "as in mainline Linux: the double fault is delivered and handled; no reset",
                 reset=False, vectors=(14, 8), gates={14: 0, 8: ist},
                 incidents=("double_fault", "stack_starvation"),
                 absent=("triple_fault", "redzone_clobber"),
                 facts=starve, serial=r"lab: #DF delivered"),
        Scenario("redzone-noist", "SC_REDZONE_NOIST",
                 "CPL 0 code on a user-range stack keeps 128 bytes below %rsp while the LAPIC "
                 "timer fires through a gate without IST: the frame lands in the red zone",
                 reset=False, vectors=(timer,) * c["TIMER_TICKS"], gates={timer: 0},
                 incidents=("redzone_clobber",), absent=("triple_fault",),
                 facts={"cpl": 0, "rsp": c["REDZONE_RSP"], "rip_symbol": "redzone_wait"},
                 serial=r"lab: redzone CLOBBERED bytes=0x0*[1-9a-f]"),
        Scenario("redzone-ist", "SC_REDZONE_IST",
                 "the same red-zone code, the timer gate on IST 1: the red zone stays intact",
                 reset=False, vectors=(timer,) * c["TIMER_TICKS"], gates={timer: ist},
                 absent=("triple_fault", "redzone_clobber"),
                 facts={"cpl": 0, "rsp": c["REDZONE_RSP"], "rip_symbol": "redzone_wait"},
                 serial=r"lab: redzone intact"),
        Scenario("cpl3", "SC_CPL3",
                 "the same push below the stack by a CPL 3 program, for contrast: the #PF frame "
                 "goes on RSP0, the handler maps the page; nothing is wrong",
                 reset=False, vectors=(14, c["SYSCALL_VECTOR"]), gates={14: 0},
                 absent=("triple_fault", "double_fault", "stack_starvation", "redzone_clobber",
                         "fault_loop", "gs_write", "kernel_mode_process"),
                 facts={"cpl": 3, "rsp": c["STARVE_RSP"], "cr2": c["STARVE_CR2"],
                        "error_code": c["CPL3_PF_ERROR"], "rip_symbol": "user_push"},
                 serial=r"lab: CPL 3 program done"),
        Scenario("gs-write", "SC_GS_WRITE",
                 "CPL 0 code loads %gs and writes its GS base (wrgsbase, or the MSR where the "
                 "CPU lacks FSGSBASE) over the kernel's per-CPU base, then traps (int3)",
                 reset=False, vectors=(3,), gates={3: ist},
                 incidents=("gs_write",), absent=("triple_fault", "redzone_clobber"),
                 facts={"cpl": 0, "gs_base": c["GS_USER_VALUE"], "rip_symbol": "gs_wrgsbase"},
                 serial=r"lab: gs_base=0x0*7ffff7ff0000"),
        Scenario("fault-loop", "SC_FAULT_LOOP",
                 "the starvation push with #PF on IST 1, whose handler goes back to the faulting "
                 "stack and pushes there: the same #PF at the same instruction, forever, no reset",
                 reset=False, vectors=(14, 14, 14), gates={14: ist},
                 incidents=("fault_loop",), absent=("triple_fault", "redzone_clobber"),
                 facts={**starve, "loop_symbol": "loop_push"},
                 timeout=10.0, log_cap=512 << 10),
    ]


SCENARIOS: dict[str, Scenario] = {s.name: s for s in _scenarios()}


def get(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise KeyError(f"no lab scenario {name!r} (have: {', '.join(SCENARIOS)})") from None


def elf_symbols(elf: Path) -> dict[str, int]:
    """The labels of a built lab kernel: name -> address."""
    from elftools.elf.elffile import ELFFile

    with open(elf, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        return {s.name: s["st_value"] for s in symtab.iter_symbols() if s.name}
