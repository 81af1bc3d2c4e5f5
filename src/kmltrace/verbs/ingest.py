"""``kmltrace ingest TARGET... -o OUT.parquet``: normalise TARGETs into one event table."""

from __future__ import annotations

import click

from kmltrace.output import print_error, print_json


@click.command()
@click.argument("targets", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False),
              help="Parquet file to write.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def ingest(targets, output, as_json):
    """Normalise TARGETs (bundles, traces, logs) into one parquet event table.

    \b
    Examples:
      kmltrace ingest trace.txt -o events.parquet
      kmltrace ingest bundle/ perf.txt -o all.parquet --json
    """
    from kmltrace.capture import load
    from kmltrace.analysis.events import merged_events

    capture = load(list(targets))
    table = merged_events(capture).collect()
    table.write_parquet(output)
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
        click.echo(f"{table.height} events from {len(capture.inputs)} input(s) -> {output}",
                   err=True)
    raise SystemExit(1 if capture.failed_inputs else 0)
