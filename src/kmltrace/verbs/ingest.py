"""``kmltrace ingest TARGET... -o OUT.parquet``: normalise TARGETs into one event table."""

from __future__ import annotations

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
    from kmltrace.errors import KmltraceError

    try:
        inputs, total = _streamed(targets, Path(output))
        if inputs is None:
            inputs, total = _merged(targets, Path(output))
    except OSError as e:
        print_error(KmltraceError(f"cannot write: {e.strerror or e}", path=output))
        raise SystemExit(1) from None
    except KmltraceError as e:
        print_error(e)
        raise SystemExit(1) from None
    errors = [e for p in inputs for e in p.errors]
    formats: dict[str, int] = {}
    for parsed in inputs:
        formats[parsed.format] = formats.get(parsed.format, 0) + 1
    result = {"events": total, "output": output, "formats": formats,
              "inputs": [p.summary() for p in inputs],
              "errors": [str(e) for e in errors]}
    for error in errors:
        print_error(error)
    if as_json:
        print_json(result)
    else:
        _print_table(inputs, total, output)
    raise SystemExit(1 if errors else 0)


def _merged(targets, output: Path):
    """Every TARGET parsed whole, merged (dedupe, time order, attribution), written."""
    from kmltrace.analysis.events import merged_events
    from kmltrace.capture import load
    from kmltrace.event_file import write_event_file

    capture = load(list(targets))
    table = merged_events(capture).collect()
    write_event_file(table, output)
    return capture.inputs, table.height


def _streamed(targets, output: Path):
    """One text trace goes to parquet batch by batch (bounded memory); (None, 0) when the
    TARGETs need the whole merge (several inputs, a bundle, a binary format)."""
    from kmltrace import ingest_stream
    from kmltrace.errors import KmltraceError
    from kmltrace.formats.sniff import detect

    if len(targets) != 1 or not Path(targets[0]).is_file():
        return None, 0
    path = Path(targets[0])
    try:
        module = detect(path)
    except KmltraceError:
        return None, 0      # the whole path reports it as it reports any bad input
    if not ingest_stream.streamable(module):
        return None, 0
    try:
        parsed = ingest_stream.ingest_text(path, module, output)
    except (ingest_stream.NeedsWholeTable, KmltraceError):
        return None, 0      # the whole path merges it, or keeps what it can and reports
    if parsed.count == 0:   # nothing to stream: the whole path writes the empty table
        return None, 0
    return [parsed], parsed.count


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
        table.add_row(Text(safe_text(parsed.path)), parsed.format, str(parsed.count),
                      str(parsed.meta.get("lost_events", "")),
                      {"us": "µs", "ns": "ns", "counter": "counter"}.get(precision, ""),
                      str(len(parsed.errors)) if parsed.errors else "")
    Console(soft_wrap=True).print(table)
