"""The command line: the verbs of CONTRACT.md.

Each verb lives in its own module under ``kmltrace.verbs`` and is imported only when it runs,
so ``kmltrace --help`` stays fast and one verb's dependencies never slow another.
Exit status: 0 the analysis ran on every input; 1 an input could not be used or the verb was
refused; 2 a usage error.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import click

from kmltrace import __version__

# numpy's OpenBLAS starts a thread per CPU that spins for a while after the import: kmltrace
# does no linear algebra, and on 2 CPUs the spinning cost ~0.13 CPU-s of every run that
# imports numpy (before polars or numpy is imported, or it has no effect)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _quiet_interrupts(unraisable, default=sys.unraisablehook):
    """A Ctrl-C that lands in a callback (a weakref's, a __del__) is lost either way: Python
    prints it as "Exception ignored" with a traceback. Say nothing: polars ends a running
    query on the same Ctrl-C, and the verb then stops with "Aborted!"."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        return
    default(unraisable)


sys.unraisablehook = _quiet_interrupts

#: verb -> "module:attribute" of its click command
VERBS: dict[str, str] = {
    "collect": "kmltrace.verbs.collect:collect",
    "snapshot": "kmltrace.verbs.snapshot:snapshot",
    "ingest": "kmltrace.verbs.ingest:ingest",
    "report": "kmltrace.verbs.report:report",
    "postmortem": "kmltrace.verbs.report:postmortem",
    "export": "kmltrace.verbs.export:export",
    "audit": "kmltrace.verbs.audit:audit",
    "tui": "kmltrace.verbs.tui:tui",
    "lab": "kmltrace.verbs.lab:lab",
}

HELP = """Find out why a Kernel Mode Linux machine faulted, double-faulted or reset.

\b
Examples:
  kmltrace report sample_traces/BUNDLE        # processes and incidents of a capture
  kmltrace postmortem qemu.log console.log    # the chain of exceptions before a reset
  kmltrace ingest trace.txt -o events.parquet # one normalised event table
  sudo kmltrace collect -- /trusted/prog      # capture a kernel-mode program
  kmltrace tui BUNDLE                         # browse incidents, processes and events
"""


class LazyVerbs(click.Group):
    def list_commands(self, ctx):
        return [v for v in VERBS if self._available(v)]

    def _available(self, name):
        module = VERBS[name].split(":")[0]
        return importlib.util.find_spec(module) is not None

    def get_command(self, ctx, name):
        if name not in VERBS or not self._available(name):
            return None
        module, attr = VERBS[name].split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyVerbs, help=HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kmltrace")
def main():
    pass


if __name__ == "__main__":
    sys.exit(main())
