"""``kmltrace export TARGET... --format chrome-json -o FILE``: a Chrome trace-event JSON file
that Perfetto's UI (ui.perfetto.dev, "Open trace file") and chrome://tracing open.

One process track per thread group (named after its comm), one thread per task; page faults,
exceptions and interrupts are instant events, syscalls are slices from sys_enter to sys_exit.
Rows without time (a QEMU log) go on a track of their own, one microsecond apart in log order.
"""

from __future__ import annotations

import json

import click
import polars as pl

from kmltrace.output import print_error, print_json

HEX_DIGITS = {i: "0123456789abcdef"[i] for i in range(16)}
#: pid of the track that holds rows without time or task
UNTIMED_PID = -1


def hex_expr(column: str) -> pl.Expr:
    """``"0x..."`` strings for a UInt64 column, on whole columns (JSON readers lose 64-bit
    integers above 2**53, so addresses travel as hex strings)."""
    value = pl.col(column).cast(pl.UInt64)
    digits = [((value // (16 ** (15 - i))) % 16).replace_strict(HEX_DIGITS, return_dtype=pl.String)
              for i in range(16)]
    text = pl.concat_str(digits).str.strip_chars_start("0")
    return (pl.when(value.is_null()).then(pl.lit(None, dtype=pl.String))
            .otherwise(pl.lit("0x") + pl.when(text == "").then(pl.lit("0")).otherwise(text)))


def chrome_events(events: pl.LazyFrame) -> list[pl.DataFrame]:
    """Frames whose rows are trace events (each frame one JSON array of objects)."""
    t0 = events.select(pl.col("ts_ns").min()).collect().item() or 0
    base = events.with_columns(
        # microseconds from the first timed event; untimed rows one microsecond apart in
        # their own order, on their own track
        pl.when(pl.col("ts_ns").is_not_null()).then((pl.col("ts_ns") - t0) / 1000.0)
        .otherwise(pl.col("row").cast(pl.Float64)).alias("ts"),
        # ftrace has no tgid without record-tgid: the pid is then its own track
        pl.coalesce("tgid", "task_pid").fill_null(UNTIMED_PID).alias("pid"),
        pl.col("task_pid").fill_null(UNTIMED_PID).alias("tid"),
    )
    instants = (base.filter(
        pl.col("event").is_in(["page_fault_user", "page_fault_kernel", "exception",
                               "hw_interrupt", "triple_fault", "cpu_reset", "oops",
                               "signal_deliver", "signal_generate", "sched_process_exec",
                               "sched_process_fork", "sched_process_exit"])
        | ((pl.col("system") == "irq_vectors") & pl.col("event").str.ends_with("_entry")))
        .select(pl.col("event").alias("name"), pl.col("system").fill_null("event").alias("cat"),
                pl.lit("i").alias("ph"), pl.lit("t").alias("s"), "ts", "pid", "tid",
                pl.struct(hex_expr("address").alias("address"), hex_expr("ip").alias("ip"),
                          hex_expr("error_code").alias("error_code"), "vector", "cpu",
                          "file", "line").alias("args")))
    calls = base.filter(pl.col("event").is_in(["sys_enter", "sys_exit"])).with_columns(
        pl.col("event").shift(-1).over("tid", order_by="row").alias("_next"),
        pl.col("ts").shift(-1).over("tid", order_by="row").alias("_end"))
    slices = (calls.filter((pl.col("event") == "sys_enter") & (pl.col("_next") == "sys_exit"))
              .select(pl.concat_str([pl.lit("syscall "), pl.col("id").cast(pl.String)]).alias("name"),
                      pl.lit("syscall").alias("cat"), pl.lit("X").alias("ph"), "ts",
                      (pl.col("_end") - pl.col("ts")).alias("dur"), "pid", "tid",
                      pl.struct("id", "cpu", "file", "line").alias("args")))
    names = (base.group_by("pid", "tid").agg(pl.col("task_comm").drop_nulls().last().alias("comm"))
             .with_columns(pl.col("comm").fill_null("(no task: log order)")))
    threads = names.select(pl.lit("thread_name").alias("name"), pl.lit("M").alias("ph"), "pid",
                           "tid", pl.struct(pl.col("comm").alias("name")).alias("args"))
    leaders = (names.sort(pl.col("pid") != pl.col("tid")).unique("pid", keep="first")
               .select(pl.lit("process_name").alias("name"), pl.lit("M").alias("ph"), "pid",
                       pl.struct(pl.col("comm").alias("name")).alias("args")))
    return pl.collect_all([leaders, threads, instants, slices])


def write_chrome_json(events: pl.LazyFrame, path: str) -> int:
    frames = chrome_events(events)
    count = 0
    with open(path, "w") as out:
        out.write('{"displayTimeUnit": "ns", "traceEvents": [')
        first = True
        for frame in frames:
            if not frame.height:
                continue
            body = frame.write_json()          # a JSON array of row objects
            out.write(("" if first else ",") + body[1:-1])
            first = False
            count += frame.height
        out.write("]}\n")
    return count


@click.command()
@click.argument("targets", nargs=-1, required=True, type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["chrome-json"]), default="chrome-json",
              show_default=True, help="Output format.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="File to write.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
def export(targets, fmt, output, as_json):
    """Export TARGETs' events for a trace viewer (Perfetto UI, chrome://tracing).

    \b
    Examples:
      kmltrace export BUNDLE --format chrome-json -o trace.json
      kmltrace export trace.txt qemu.log -o both.json
    """
    from kmltrace.analysis.events import merged_events
    from kmltrace.capture import load

    capture = load(list(targets))
    for error in capture.errors:
        print_error(error)
    count = write_chrome_json(merged_events(capture), output)
    if as_json:
        print_json({"output": output, "format": fmt, "trace_events": count})
    else:
        click.echo(f"{count} trace events -> {output}", err=True)
    raise SystemExit(1 if capture.failed_inputs else 0)


def load_chrome_json(path: str) -> dict:
    """Read an exported file back (for tests and tools)."""
    with open(path) as f:
        return json.load(f)
