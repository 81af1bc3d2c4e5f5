"""``kmltrace collect``: capture ftrace (our own tracefs instance), optionally perf, while a
command runs or for a duration, into a bundle directory."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import click

from kmltrace.errors import KmltraceError
from kmltrace.output import fail, print_error, print_json, safe_text


def _progress_printer(console):
    """A live one-line progress display on stderr (only when stderr is a terminal)."""
    from rich.text import Text

    def show(progress):
        line = Text()
        line.append(f"collecting {progress.elapsed:6.1f}s  ", style="bold")
        line.append(f"{progress.events:>10,} events  {progress.rate:>9,.0f}/s  ")
        line.append(f"lost {progress.lost:,}  ", style="red" if progress.lost else "green")
        line.append(f"{progress.bytes / 1e6:8.1f} MB")
        console.print(line, end="\r", soft_wrap=True, highlight=False)
    return show


@click.command(context_settings={"ignore_unknown_options": False})
@click.option("--duration", type=float, metavar="S",
              help="Stop after S seconds (default: when the command ends, or on Ctrl-C).")
@click.option("-o", "--output", type=click.Path(path_type=Path), metavar="DIR",
              help="Bundle directory to write (default: ./kmltrace-YYYYmmdd-HHMMSS).")
@click.option("--events", "events", metavar="SET", multiple=True,
              help="Comma-separated events (system:* or system:event; 'default' is the KML "
                   "set). Default: exceptions, irq_vectors, nmi, raw_syscalls, sched "
                   "switch/exec/fork/exit, signal, and trace_marker prints.")
@click.option("--pid", type=int, help="Trace this running process and its children.")
@click.option("--comm", help="Trace the processes with this name.")
@click.option("--buffer-kb", type=click.IntRange(min=4), default=None, metavar="N",
              help="Ring buffer per CPU in KiB (default 4096).")
@click.option("--perf", "use_perf", is_flag=True,
              help="Also run perf record with the same tracepoints (perf.txt in the bundle).")
@click.option("--kvm", is_flag=True, help="Add kvm:* events (a host running KML guests).")
@click.option("--mount", is_flag=True, help="Mount tracefs first if it is not mounted.")
@click.option("--vm", is_flag=True,
              help="CMD is a QEMU command line: run it so that a reset leaves evidence (QEMU "
                   "log, console, registers, memory dump; host kvm events under KVM).")
@click.option("--clean", is_flag=True,
              help="Remove tracefs instances left by collectors that died, and exit.")
@click.option("--arm-boot-trace", "arm_boot_trace", is_flag=True,
              help="Linux >= 6.12: check the boot-mapped (persistent) ftrace instance, say the "
                   "kernel parameters it needs, enable the KML events in it, and exit.")
@click.option("--last-boot", "last_boot", is_flag=True,
              help="Read the previous boot's events from the boot-mapped instance (after a "
                   "reset) into a bundle (kind last_boot), and exit.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object on stdout; the command's output goes to stderr.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def collect(duration, output, events, pid, comm, buffer_kb, use_perf, kvm, mount, clean,
            as_json, command, vm=False, arm_boot_trace=False, last_boot=False):
    """Capture what kernel-mode (and other) processes do into a bundle.

    Needs root. Uses its own tracefs instance and puts back everything it touched, also on
    Ctrl-C or SIGTERM (the capture so far is saved as a valid bundle).

    \b
    Examples:
      sudo kmltrace collect -o run1 -- /trusted/prog arg
      sudo kmltrace collect --duration 10 --kvm -o host
      sudo kmltrace collect --pid 1234 --buffer-kb 8192 --perf
      sudo kmltrace collect --clean
    """
    from kmltrace.collectors import session

    if arm_boot_trace or last_boot:
        _boot_trace(arm_boot_trace, output, as_json)  # kmltrace.collectors.boot_trace
        return
    if clean:
        try:
            removed = session.clean_leftovers(mount)
        except KmltraceError as e:
            fail(e)
        if as_json:
            print_json({"removed": removed})
        else:
            for name in removed:
                click.echo(f"removed tracefs instance {safe_text(name)}", err=True)
            if not removed:
                click.echo("no leftover kmltrace instance", err=True)
        return

    options = session.CollectOptions(
        output=output, duration=duration, events=list(events) or ["default"], pid=pid,
        comm=comm, buffer_kb=buffer_kb or session.DEFAULT_BUFFER_KB, perf=use_perf, kvm=kvm,
        mount=mount, command=list(command),
        command_stdout=sys.stderr.fileno() if as_json else None)
    if not command and duration is None and pid is None and comm is None and sys.stdin.isatty():
        click.echo("collecting until Ctrl-C (use --duration S or -- CMD to bound it)", err=True)
    # --vm (the lab's QEMU runner, kmltrace.collectors.vm) plugs in here: it receives the
    # same options and returns the same result dictionary.
    run = _run_vm if vm else _run_host
    result = run(options)
    if as_json:
        print_json(result)
    else:
        click.echo(_summary(result), err=True)
    raise SystemExit(0)


def _boot_trace(arm: bool, output, as_json: bool) -> None:
    from kmltrace.collectors import boot_trace

    try:
        result = boot_trace.arm() if arm else boot_trace.read_last_boot(output)
    except KmltraceError as e:
        fail(e)
    if as_json:
        print_json(result)
        return
    if arm:
        click.echo(f"boot-mapped instance {safe_text(result['instance'])} on "
                   f"{safe_text(result['release'])}: events on: "
                   f"{', '.join(result['enabled']) or 'none'}", err=True)
        if result["missing"]:
            click.echo(f"not on this kernel: {', '.join(result['missing'])}", err=True)
        click.echo(result["survives"], err=True)
        return
    click.echo(f"bundle {safe_text(result['bundle'])}: previous boot, "
               f"{result['raw_bytes']:,} bytes of ring-buffer pages; per CPU: "
               + ", ".join(f"{c}: {s}" for c, s in result["cpus"].items()), err=True)
    for warning in result["warnings"]:
        click.echo(f"warning: {safe_text(warning)}", err=True)


def _run_host(options) -> dict:
    from rich.console import Console

    from kmltrace.collectors.session import Collector

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    console = Console(stderr=True)
    progress = _progress_printer(console) if console.is_terminal else None
    try:
        result = Collector(options, stop=stop, on_progress=progress,
                           warn=lambda m: print_error(m)).run()
    except KmltraceError as e:
        fail(e)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if progress:
            console.print(" " * 79, end="\r")
    return result


def _run_vm(options) -> dict:
    from kmltrace.collectors.vm import collect_vm

    try:
        return collect_vm(options)
    except KmltraceError as e:
        fail(e)


def _summary(result: dict) -> str:
    lines = [f"bundle {safe_text(result['bundle'])}: {result['events']:,} events, "
             f"{result['lost_events']:,} lost, {result['bytes'] / 1e6:.1f} MB in "
             f"{result['duration_s']:.1f}s (stopped: {result['stop_reason']})"]
    if result["lost_events"]:
        lines.append("events were LOST: the ring buffer filled faster than it was read; "
                     "rerun with a larger --buffer-kb or fewer --events")
    processes = result.get("processes") or {}
    if processes.get("missed"):
        lines.append(f"{processes['missed']} traced process(es) ended before their exe and "
                     f"maps could be read")
    return "\n".join(lines)
