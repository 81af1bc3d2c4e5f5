"""The lab: small freestanding x86-64 kernels that reproduce KML's failure modes under QEMU.

``kernel/`` holds the sources (kernel.S, lab.h shared with :mod:`.scenarios`, linker.ld);
:mod:`.build` builds a scenario's kernel at first use into a cache; :mod:`.runner` runs it under
QEMU (TCG or KVM) and writes a bundle that every analysing verb reads.  The analysis never
imports this package: its verdicts come from the CPU's evidence in the bundle.
"""
