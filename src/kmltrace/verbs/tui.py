"""``kmltrace tui [TARGET...]``: browse incidents, processes, the timeline and every event."""

from __future__ import annotations

import click


@click.command()
@click.argument("targets", nargs=-1, type=click.Path())
@click.option("--vmlinux", type=click.Path(dir_okay=False), help="ELF with the kernel's symbols.")
def tui(targets, vmlinux):
    """Browse a capture: incidents, their evidence, processes, timeline, events, snapshot.

    With no TARGET, pick a bundle or a trace of the current directory.

    \b
    Examples:
      kmltrace tui sample_traces/BUNDLE          # a capture bundle
      kmltrace tui qemu.log console.log          # a reset's evidence, merged
      kmltrace tui events.parquet                # a table written by kmltrace ingest
      kmltrace tui                               # pick one here
    """
    from kmltrace.tui.app import KmltraceApp

    KmltraceApp(list(targets), vmlinux=vmlinux).run()
