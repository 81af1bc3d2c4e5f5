"""``kmltrace audit PATH...``: check programs meant for /trusted (see analysis/audit.py)."""

from __future__ import annotations

import click

from kmltrace.output import print_error, print_json, safe_text


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print {binaries, incidents} as JSON.")
def audit(paths, as_json):
    """Check programs meant for /trusted: files, or directories walked.

    For each ELF: class and machine (32-bit: elf32_in_trusted), static or dynamic, its
    interpreter and libc, the sites that write GS (gs_write, with symbol and address) and the
    syscall / sysenter / int $0x80 sites. Non-ELF files are listed as skipped. A path that
    cannot be read, or a damaged ELF, is one error line; the walk goes on and the exit status
    is 1. A symlink loop is one line too, not followed, and does not change the status.

    \b
    Examples:
      kmltrace audit /mnt/rootfs/trusted
      kmltrace audit ./prog --json
    """
    from kmltrace.analysis.audit import audit_paths

    result = audit_paths(list(paths))
    for problem in result.warnings + result.errors:
        print_error(problem)
    if as_json:
        print_json(result.to_json())
    else:
        _print_rich(result)
    raise SystemExit(1 if result.errors else 0)


def _print_rich(result) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console()
    table = Table(title="ELF programs", show_lines=False)
    for col in ("path", "class", "machine", "linking", "libc", "GS writes",
                "syscall", "sysenter", "int 0x80"):
        table.add_column(col, justify="right" if col in ("GS writes", "syscall", "sysenter",
                                                         "int 0x80") else "left")
    for b in result.binaries:
        linking = "static" if b["static"] else f"dynamic {b['interpreter'] or ''}".strip()
        counts = b.get("kernel_entries") or {}
        gs = len(b.get("gs_writes") or [])
        table.add_row(Text(safe_text(b["path"])), Text(b["class"], style="bold red" if b["class"] == "ELF32" else ""),
                      b["machine"].removeprefix("EM_"), Text(safe_text(linking)), Text(safe_text(b["libc"] or "-")),
                      Text(str(gs), style="bold yellow" if gs else ""),
                      *(str(counts.get(k, "-")) for k in ("syscall", "sysenter", "int80")))
    console.print(table)
    styles = {"critical": "bold red", "error": "red", "warning": "yellow", "info": "cyan"}
    for inc in result.incidents:
        line = Text(f"{inc.severity:8} {inc.kind:17} ", style=styles[inc.severity])
        line.append(safe_text(inc.summary))
        console.print(line)
        if inc.kind == "gs_write":
            for ev in inc.evidence:
                console.print(Text("    " + safe_text(ev["text"])))
    console.print(Text(f"{len(result.binaries)} ELF(s), {len(result.skipped)} skipped, "
                       f"{len(result.errors)} error(s), {len(result.warnings)} symlink loop(s)"))
