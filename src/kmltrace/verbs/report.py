"""``kmltrace report`` and ``kmltrace postmortem``: the whole analysis of TARGETs."""

from __future__ import annotations

import click

from kmltrace.output import print_error, print_json

_OPTIONS = [
    click.argument("targets", nargs=-1, required=True, type=click.Path()),
    click.option("--vmlinux", type=click.Path(dir_okay=False), help="ELF with symbols."),
    click.option("--json", "as_json", is_flag=True, help="Print the report object as JSON."),
    click.option("--markdown", "as_markdown", is_flag=True, help="Print the report as Markdown."),
    click.option("--streaming", is_flag=True,
                 help="Run every query on polars' streaming engine (chosen by itself when a "
                      "parquet event table is too large for the memory available)."),
]


def _with_options(fn):
    for option in reversed(_OPTIONS):
        fn = option(fn)
    return fn


def _run(targets, vmlinux, as_json, as_markdown, postmortem, streaming=False):
    import polars as pl

    from kmltrace.capture import load
    from kmltrace.memory import needs_streaming
    from kmltrace.report import build_report, render_markdown, render_rich

    capture = load(list(targets), vmlinux=vmlinux)
    for error in capture.errors:
        print_error(error)
    # a table larger than memory: every collect() runs in batches on the streaming engine
    engine = "streaming" if streaming or needs_streaming(capture) else "auto"
    with pl.Config(engine_affinity=engine):
        report = build_report(capture, postmortem=postmortem)
    if as_json:
        print_json(report)
    elif as_markdown:
        click.echo(render_markdown(report), nl=False)
    else:
        from rich.console import Console
        render_rich(report, Console())
    raise SystemExit(1 if capture.failed_inputs else 0)


@click.command()
@_with_options
def report(targets, vmlinux, as_json, as_markdown, streaming):
    """Analyse TARGETs: processes and their modes, faults, stacks, incidents.

    \b
    Examples:
      kmltrace report sample_traces/host-6.18-workload
      kmltrace report trace.txt perf.txt --json
      kmltrace report BUNDLE --markdown > report.md
      kmltrace report events.parquet --streaming   # a kmltrace ingest table, in batches
    """
    _run(targets, vmlinux, as_json, as_markdown, postmortem=False, streaming=streaming)


@click.command()
@_with_options
def postmortem(targets, vmlinux, as_json, as_markdown, streaming):
    """Reconstruct what led to each reset, double fault or fault loop.

    \b
    Examples:
      kmltrace postmortem qemu.log console.log
      kmltrace postmortem BUNDLE --json
    """
    _run(targets, vmlinux, as_json, as_markdown, postmortem=True, streaming=streaming)
