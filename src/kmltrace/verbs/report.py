"""``kmltrace report`` and ``kmltrace postmortem``: the whole analysis of TARGETs."""

from __future__ import annotations

import click

from kmltrace.output import print_error, print_json

_OPTIONS = [
    click.argument("targets", nargs=-1, required=True, type=click.Path()),
    click.option("--vmlinux", type=click.Path(dir_okay=False), help="ELF with symbols."),
    click.option("--json", "as_json", is_flag=True, help="Print the report object as JSON."),
    click.option("--markdown", "as_markdown", is_flag=True, help="Print the report as Markdown."),
]


def _with_options(fn):
    for option in reversed(_OPTIONS):
        fn = option(fn)
    return fn


def _run(targets, vmlinux, as_json, as_markdown, postmortem):
    from kmltrace.capture import load
    from kmltrace.report import build_report, render_markdown, render_rich

    capture = load(list(targets), vmlinux=vmlinux)
    for error in capture.errors:
        print_error(error)
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
def report(targets, vmlinux, as_json, as_markdown):
    """Analyse TARGETs: processes and their modes, faults, stacks, incidents.

    \b
    Examples:
      kmltrace report sample_traces/host-6.18-workload
      kmltrace report trace.txt perf.txt --json
      kmltrace report BUNDLE --markdown > report.md
    """
    _run(targets, vmlinux, as_json, as_markdown, postmortem=False)


@click.command()
@_with_options
def postmortem(targets, vmlinux, as_json, as_markdown):
    """Reconstruct what led to each reset, double fault or fault loop.

    \b
    Examples:
      kmltrace postmortem qemu.log console.log
      kmltrace postmortem BUNDLE --json
    """
    _run(targets, vmlinux, as_json, as_markdown, postmortem=True)
