"""``kmltrace ingest TARGET... -o OUT.parquet``: normalise TARGETs into one event table."""

from __future__ import annotations

import os
from pathlib import Path

import click

from kmltrace.output import print_error, print_json, safe_text


@click.command()
@click.argument("targets", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False),
              help="Parquet file to write.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def ingest(targets, output, as_json):
    """Normalise TARGETs (bundles, traces, logs) into one parquet event table.

    Formats are detected from content. A file that cannot be read, or lines that do not
    parse, are reported one per line on stderr (file:line: message); the other TARGETs are
    still ingested and the exit status is 1.

    \b
    Examples:
      kmltrace ingest trace.txt -o events.parquet
      kmltrace ingest bundle/ perf.txt -o all.parquet --json
    """
    from kmltrace.analysis.events import merged_events
    from kmltrace.capture import load
    from kmltrace.errors import KmltraceError

    capture = load(list(targets))
    table = merged_events(capture).collect()
    try:
        _write_atomically(table, Path(output))
    except OSError as e:
        print_error(KmltraceError(f"cannot write: {e.strerror or e}", path=output))
        raise SystemExit(1) from None
    formats: dict[str, int] = {}
    for parsed in capture.inputs:
        formats[parsed.format] = formats.get(parsed.format, 0) + 1
    result = {"events": table.height, "output": output, "formats": formats,
              "inputs": [p.summary() for p in capture.inputs],
              "errors": [str(e) for e in capture.errors]}
    for error in capture.errors:
        print_error(error)
    if as_json:
        print_json(result)
    else:
        _print_table(capture.inputs, table.height, output)
    raise SystemExit(1 if capture.errors else 0)


def _write_atomically(table, output: Path) -> None:
    """Write the parquet beside its final name, then rename: no half-written OUT."""
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        table.write_parquet(tmp)
        os.replace(tmp, output)
    finally:
        if tmp.exists():
            tmp.unlink()


def _print_table(inputs, total: int, output: str) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"{total} events -> {output}", title_justify="left")
    table.add_column("input", overflow="fold")
    for name, justify in (("format", "left"), ("events", "right"), ("lost", "right"),
                          ("time", "left"), ("errors", "right")):
        table.add_column(name, justify=justify)
    for parsed in inputs:
        precision = parsed.meta.get("precision")
        table.add_row(Text(safe_text(parsed.path)), parsed.format, str(parsed.events.height),
                      str(parsed.meta.get("lost_events", "")),
                      {"us": "µs", "ns": "ns", "counter": "counter"}.get(precision, ""),
                      str(len(parsed.errors)) if parsed.errors else "")
    Console(soft_wrap=True).print(table)
