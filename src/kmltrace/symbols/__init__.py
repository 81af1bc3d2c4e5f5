"""Symbols: addresses to ``symbol+0xoff/0xsize``, for every verb.

- :mod:`~kmltrace.symbols.table`: a sorted symbol table with vectorised lookups.
- :mod:`~kmltrace.symbols.readers`: tables from an ELF symtab, System.map or kallsyms text.
- :mod:`~kmltrace.symbols.cache`: parsed tables cached as parquet (build-id or path+size+mtime).
- :mod:`~kmltrace.symbols.service`: the :class:`Symbolizer` of a capture (kernel table with the
  KASLR slide, user programs with their load bias from /proc/PID/maps).
- :mod:`~kmltrace.symbols.lines`: DWARF line info (file:line) when the ELF has it.
"""

from kmltrace.symbols.table import SymbolTable
from kmltrace.symbols.service import Symbolizer

__all__ = ["SymbolTable", "Symbolizer"]
