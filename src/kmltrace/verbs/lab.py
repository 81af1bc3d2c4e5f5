"""``kmltrace lab list`` and ``kmltrace lab run SCENARIO``: reproduce KML's failure modes."""

from __future__ import annotations

import click

from kmltrace.errors import KmltraceError
from kmltrace.output import fail, print_json, safe_text


@click.group()
def lab():
    """Small x86-64 kernels that run code at CPL 0 on a user-range stack, as KML does,
    with IDT gates with or without IST, under QEMU (TCG or KVM).

    \b
    Examples:
      kmltrace lab list
      kmltrace lab run starvation -o /tmp/starve     # triple fault; bundle in /tmp/starve
      kmltrace postmortem /tmp/starve                # the chain #PF -> #DF -> reset
      kmltrace lab run redzone-noist --accel kvm --json
    """


@lab.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def list_scenarios(as_json):
    """The scenarios and what each must show."""
    from kmltrace.lab.scenarios import SCENARIOS

    if as_json:
        print_json({"scenarios": [s.to_json() for s in SCENARIOS.values()]})
        return
    width = max(len(name) for name in SCENARIOS)
    for scenario in SCENARIOS.values():
        ending = "reset" if scenario.reset else "no reset"
        click.echo(f"{scenario.name:<{width}}  [{ending}] {scenario.description}")


@lab.command("run")
@click.argument("scenario")
@click.option("--accel", type=click.Choice(["tcg", "kvm"]), default="tcg", show_default=True,
              help="QEMU accelerator. Under KVM, -d int logs nothing: the host's kvm "
                   "tracepoints (as root) and -d cpu_reset are recorded instead.")
@click.option("-o", "--output", "output", type=click.Path(file_okay=False),
              help="Bundle directory to write (default: ./lab-SCENARIO-ACCEL-TIME).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def run(scenario, accel, output, as_json):
    """Run SCENARIO under QEMU and write a bundle (QEMU log, serial console, registers,
    guest memory dump, host kvm events under KVM) that every verb reads."""
    from kmltrace.lab import runner
    from kmltrace.lab.scenarios import SCENARIOS

    if scenario not in SCENARIOS:
        raise click.UsageError(f"no scenario {scenario!r}; choose from: "
                               f"{', '.join(SCENARIOS)}")
    try:
        result = runner.run(scenario, accel=accel, out=output)
    except KmltraceError as e:
        fail(e)
    if as_json:
        print_json(result)
    else:
        click.echo(f"{safe_text(scenario)} ({accel}): ended by {result['end']}; "
                   f"bundle {safe_text(result['bundle'])}")
