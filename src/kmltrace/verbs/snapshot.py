"""``kmltrace snapshot``: IDT, TSS/IST stacks and tasks of a kernel, read with drgn."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from kmltrace.output import print_error, print_json, safe_text


@click.command()
@click.option("--vmcore", type=click.Path(dir_okay=False),
              help="Read a vmcore (ELF, kdump, QEMU dump-guest-memory) instead of /proc/kcore.")
@click.option("--qemu", "qemu", metavar="SOCKET",
              help="Attach to a running or paused QEMU guest over its QMP socket.")
@click.option("--vmlinux", type=click.Path(dir_okay=False),
              help="The kernel's DWARF vmlinux (default: drgn's search, e.g. /usr/lib/debug).")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write the snapshot JSON here (a TARGET for the other verbs).")
@click.option("--json", "as_json", is_flag=True, help="Print the snapshot object on stdout.")
def snapshot(vmcore, qemu, vmlinux, output, as_json):
    """Snapshot a kernel with drgn: every IDT gate and its IST, each CPU's TSS stack
    pointers and exception stacks, every task's mode and saved registers, and the incidents
    they imply (ist_missing, stack_starvation risk, gs_write, kernel_mode_process).

    The default source is the running kernel (/proc/kcore, root). Every field is
    described in docs/snapshot.md.

    \b
    Examples:
      sudo kmltrace snapshot -o snap.json
      kmltrace snapshot --vmcore vmcore.elf --vmlinux vmlinux --json
      kmltrace snapshot --qemu /tmp/qmp.sock --vmlinux vmlinux -o snap.json
      kmltrace report snap.json
    """
    from kmltrace.collectors.snapshot import snapshot as take
    from kmltrace.errors import KmltraceError

    if vmcore and qemu:
        raise click.UsageError("--vmcore and --qemu name two sources: give one")
    try:
        snap = take(vmcore=vmcore, qemu=qemu, vmlinux=vmlinux)
    except KmltraceError as e:
        print_error(e)
        raise SystemExit(1) from None
    status = 0
    if snap.get("limits"):   # a partial snapshot is still a snapshot: one warning line, exit 0
        print_error(KmltraceError("warning: " + "; ".join(snap["limits"]),
                                  path=vmcore or qemu or "/proc/kcore"))
    for error in snap.get("errors") or []:
        print_error(KmltraceError(error, path=vmcore or qemu or "/proc/kcore"))
        status = 1
    if output:
        try:
            _write_atomically(snap, Path(output))
        except OSError as e:
            print_error(KmltraceError(f"cannot write: {e.strerror or e}", path=output))
            raise SystemExit(1) from None
    if as_json:
        print_json(snap)
    else:
        _print_summary(snap, output)
    raise SystemExit(status)


def _write_atomically(snap: dict, output: Path) -> None:
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(snap, indent=1) + "\n")
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)


def _print_summary(snap: dict, output: str | None) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console()
    kernel = snap["kernel"]
    console.print(Text(f"kernel {safe_text(kernel.get('release'))}: "
                       f"{'KML' if kernel.get('kml') else 'not KML'}, {kernel.get('cpus')} CPUs, "
                       f"KASLR offset {kernel.get('kaslr_offset')}"))
    gates = Table(title="IDT gates with an IST")
    for column in ("vector", "ist", "handler", "symbol"):
        gates.add_column(column)
    for g in snap["idt"]:
        if g.get("present") and g.get("ist"):
            gates.add_row(str(g["vector"]), str(g["ist"]), g["handler"], Text(g.get("symbol") or ""))
    console.print(gates)
    modes: dict[str, int] = {}
    for task in snap["tasks"]:
        modes[task["mode"]] = modes.get(task["mode"], 0) + 1
    console.print(Text("tasks: " + (", ".join(f"{n} {m}" for m, n in sorted(modes.items()))
                                    or "none read")))
    for incident in snap["incidents"]:
        console.print(Text(f"{incident['severity']}: {incident['kind']}: "
                           f"{safe_text(incident['summary'])}"))
    if output:
        console.print(Text(f"written to {output}"))
