"""Which stack an exception or interrupt frame lands on.

x86_64 delivery rules (SDM vol. 3, 6.14.5 and 6.14.4): a gate with a non-zero IST index
always switches to TSS.IST[n-1]; otherwise a change of privilege (CPL 3 -> 0) switches to
TSS.RSP0; otherwise (CPL 0 -> 0) the frame goes onto the interrupted stack itself ("same").
A KML process runs at CPL 0 on its user-range stack, so without IST its frames land on that
stack: below %rsp, over the System V red zone, and on an unmapped page if the stack is short.
"""

from __future__ import annotations

import polars as pl

#: Mainline x86_64 (arch/x86/include/asm/page_64_types.h, idt.c): IST only for these.
MAINLINE_IST: dict[int, int] = {8: 1, 2: 2, 1: 3, 18: 4}
#: Recent mainline kernels with SEV-ES also put #VC (vector 29) on IST 5 (ESTACK_VC).
MAINLINE_VC_IST = {29: 5}
#: KML 4.0 for AMD64: every ordinary gate on IST 5 (a 128-byte stack inside the TSS),
#: #DF IST 1, NMI IST 2, #DB and #BP IST 3, #MC IST 4.
KML_SPECIAL_IST: dict[int, int] = {8: 1, 2: 2, 1: 3, 3: 3, 18: 4}
KML_DEFAULT_IST = 5
KML_IST5_STACK_BYTES = 128


def ist_layout(kml: bool) -> dict[int, int]:
    """Vector -> IST index (0 = none) for all 256 gates of a mainline or a KML 4.0 kernel."""
    if kml:
        return {v: KML_SPECIAL_IST.get(v, KML_DEFAULT_IST) for v in range(256)}
    return {v: MAINLINE_IST.get(v, 0) for v in range(256)}


def landing_stack(cpl: int | None, ist: int | None) -> str | None:
    """``istN``, ``rsp0`` or ``same`` for a delivery from `cpl` through a gate with `ist`."""
    if ist:
        return f"ist{ist}"
    if cpl is None or ist is None:
        return None
    return "rsp0" if cpl > 0 else "same"


def landing_stack_expr(cpl: pl.Expr, ist: pl.Expr) -> pl.Expr:
    """Column version of :func:`landing_stack` (null where CPL or the gate's IST is unknown)."""
    return (
        pl.when(ist.is_not_null() & (ist > 0)).then(pl.lit("ist") + ist.cast(pl.String))
        .when(cpl.is_null() | ist.is_null()).then(pl.lit(None, dtype=pl.String))
        .when(cpl > 0).then(pl.lit("rsp0"))
        .otherwise(pl.lit("same"))
    )


def ist_of_vector_expr(vector: pl.Expr, layout: dict[int, int]) -> pl.Expr:
    """The IST index of each row's vector under `layout` (vector -> IST)."""
    return vector.replace_strict(layout, default=None, return_dtype=pl.Int32)
