#!/usr/bin/env python3
"""How fast ``kmltrace tui`` is on a 10-million-event capture, beside toolong on the same text.

    python bench/bench_tui.py [--large bench/work/large] [--events 10000000]

Input: the real capture of bench/make_large_capture.py (1.78 M events of the sample workload,
run as root beforehand). Its event table is replicated, each copy shifted in time after the
previous one, to --events rows (bench/work/tui/events-10M.parquet, row groups of 64 Ki rows, as
``kmltrace ingest`` would write it), and its tracefs text likewise to the same number of event
lines (bench/work/tui/trace-10M.txt) for toolong.

Measured, each tool in its own process, with Textual's pilot (``App.run_test``):
- kmltrace: time from start to the first screen (incidents, with the loading bar), to the event
  view showing the first rows of the 10 M-row table, one page move (pagedown: median and max
  of 30, through pilot.press and directly: see PAGE_MOVES_HELPER), a jump to the end, and the
  whole table read into memory;
- kmltrace again with the table already in memory and nothing else running in the process
  (the UI's own cost of a page move);
- toolong (its own venv under bench/work/toolong-venv, it pins an old textual): time to its
  first screen showing lines of the same events' text, one page move, and its line index done.
Results go to bench/results.json under the key "tui" (other keys are left alone).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py
from common import save_result, sha256  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "bench" / "work" / "tui"
TOOLONG_VENV = REPO / "bench" / "work" / "toolong-venv"
SIZE = (160, 48)
PAGE_MOVES = 30


def prepare_table(large: Path, rows: int) -> Path:
    """The replicated event table (made once; remade when --events changes)."""
    import polars as pl

    out = WORK / f"events-{rows // 1_000_000}M.parquet"
    if out.exists():
        return out
    from kmltrace.analysis.events import merged_events
    from kmltrace.capture import load

    events = merged_events(load([large / "bundle"])).collect()
    keep = [c for c in events.columns if events[c].null_count() < events.height]
    events = events.select(keep)
    span = events["ts_ns"].max() - events["ts_ns"].min() + 1
    copies = -(-rows // events.height)
    table = pl.concat([events.with_columns(pl.col("ts_ns") + k * span,
                                           pl.col("seq") + k * events.height)
                       for k in range(copies)]).head(rows)
    WORK.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    table.write_parquet(tmp, row_group_size=65536)
    os.replace(tmp, out)
    return out


def prepare_text(large: Path, rows: int) -> Path:
    """The tracefs text of the same capture, its event lines repeated to `rows` lines."""
    out = WORK / f"trace-{rows // 1_000_000}M.txt"
    if out.exists():
        return out
    lines = (large / "trace.txt").read_bytes().splitlines(keepends=True)
    header = [line for line in lines if line.startswith(b"#")]
    body = [line for line in lines if not line.startswith(b"#")]
    tmp = out.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.writelines(header)
        left = rows
        while left > 0:
            f.writelines(body[:left])
            left -= len(body)
    os.replace(tmp, out)
    return out


KMLTRACE_PROBE = r"""
import asyncio, json, os, statistics, sys, time
T0 = time.perf_counter()
from kmltrace.tui.app import KmltraceApp
from kmltrace.tui.table import EventTable


{helper}

async def main(path, moves):
    out = {}
    app = KmltraceApp([path])
    async with app.run_test(size=SIZE) as pilot:
        await pilot._wait_for_screen()
        app.screen._on_timer_update()
        out["first_screen_s"] = time.perf_counter() - T0
        out["first_screen_cpu_s"] = time.process_time()
        await pilot.press("4")
        await pilot._wait_for_screen()
        table = app.screen.query_one(EventTable)
        while table.row_count == 0:
            await pilot.pause(0.01)
        out["event_view_rows_s"] = time.perf_counter() - T0
        out["rows"] = table.row_count
        out["first_row"] = table.visible_text()[0]
        out["page_move_ms"] = await page_moves(app, pilot, "pagedown", moves)
        out["cursor_after_moves"] = table.cursor_row
        t = time.perf_counter()
        await pilot.press("end")
        await pilot._wait_for_screen()
        app.screen._on_timer_update()
        out["jump_to_end_ms"] = 1000 * (time.perf_counter() - t)
        out["last_row"] = table.visible_text()[-1]
        while app.loaded.events is None and time.perf_counter() - T0 < 600:
            await pilot.pause(0.05)
        out["whole_table_read_s"] = time.perf_counter() - T0
        out["page_move_in_memory_ms"] = await page_moves(app, pilot, "pageup", moves)
    print(json.dumps(out))
    sys.stdout.flush()
    os._exit(0)         # the analysis thread of 10 M events is not waited for

SIZE = tuple(json.loads(sys.argv[3]))
asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""

PRELOADED_PROBE = r"""
import asyncio, json, os, statistics, sys, time
import polars as pl
from kmltrace.tui.app import KmltraceApp
from kmltrace.tui.model import Loaded
from kmltrace.tui.table import EventTable
{helper}
async def main(path, moves):
    events = pl.read_parquet(path)
    app = KmltraceApp([path], loaded=Loaded(targets=[path], events=events,
                                            report={"incidents": []}))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        await pilot._wait_for_screen()
        out = {"rows": app.screen.query_one(EventTable).row_count,
               "page_move_ms": await page_moves(app, pilot, "pagedown", moves),
               "load_average_1min": os.getloadavg()[0]}
    print(json.dumps(out))
    sys.stdout.flush()
    os._exit(0)

SIZE = tuple(json.loads(sys.argv[3]))
asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""

TOOLONG_PROBE = r"""
import asyncio, json, os, statistics, sys, time
T0 = time.perf_counter()
from toolong.ui import UI
from toolong.log_view import LogView
from toolong.log_lines import LogLines


{helper}

async def main(path, moves):
    out = {}
    app = UI([path], merge=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot._wait_for_screen()
        app.screen._on_timer_update()
        out["first_screen_s"] = time.perf_counter() - T0
        out["first_screen_cpu_s"] = time.process_time()
        lines = app.screen.query_one(LogLines)
        while lines.line_count == 0:
            await pilot.pause(0.01)
        out["first_lines_s"] = time.perf_counter() - T0
        lines.focus()
        await pilot.press("home")
        out["page_move_ms"] = await page_moves(app, pilot, "pagedown", moves)
        # the scan of line breaks is done when toolong removes its progress bar
        while app.screen.query("ScanProgressBar") and time.perf_counter() - T0 < 600:
            await pilot.pause(0.1)
        out["lines_indexed"] = lines.line_count
        out["index_done_s"] = time.perf_counter() - T0
    print(json.dumps(out))
    sys.stdout.flush()
    os._exit(0)

SIZE = tuple(json.loads(sys.argv[3]))
asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


PAGE_MOVES_HELPER = r"""
async def page_moves(app, pilot, key, moves):
    # One page move, measured two ways, the same for both tools:
    # - "pilot": pilot.press(key), then every message it caused handled and the screen
    #   rendered. pilot.press itself waits for the process to look idle: twice at least one
    #   20 ms sleep, repeated while any thread of the process used > 1 ms of CPU in it, so a
    #   key whose handling costs more than ~1 ms cannot measure under ~60 ms this way.
    # - "direct" (the latency a user sees): the key event handed to the driver as a terminal
    #   would, then the message queues of the app and every widget of the screen drained
    #   three times (key -> focused widget -> the messages it posts), then the screen
    #   rendered. Its median is the figure compared with the goal.
    # Wall time, and CPU time of the UI thread alone (the machine is shared, and the
    # analysis thread may run meanwhile).
    from textual import events
    out = {}
    for method in ("pilot", "direct"):
        walls, cpus = [], []
        for _ in range(moves):
            t, c = time.perf_counter(), time.thread_time()
            if method == "pilot":
                await pilot.press(key)
                await pilot._wait_for_screen()
            else:
                event = events.Key(key, None)
                event.set_sender(app)
                # textual 8 calls it send_message, toolong's 0.58 send_event
                send = getattr(app._driver, "send_message", None) or app._driver.send_event
                send(event)
                for _ in range(3):
                    await pilot._wait_for_screen()
            app.screen._on_timer_update()
            walls.append(time.perf_counter() - t)
            cpus.append(time.thread_time() - c)
        out[method] = {"median": 1000 * statistics.median(walls), "max": 1000 * max(walls),
                       "ui_thread_cpu_median": 1000 * statistics.median(cpus), "n": moves}
    return out
"""


def run_probe(python: str, probe: str, path: Path) -> dict:
    probe = probe.replace("{helper}", PAGE_MOVES_HELPER)
    started = time.perf_counter()
    proc = subprocess.run([python, "-c", probe, str(path), str(PAGE_MOVES), json.dumps(SIZE)],
                          capture_output=True, text=True, timeout=1800, cwd=WORK)
    if proc.returncode != 0 or not proc.stdout.strip():
        return {"error": proc.stderr.strip()[-2000:], "wall_s": time.perf_counter() - started}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - started
    return result


def toolong_python() -> str | None:
    python = TOOLONG_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(TOOLONG_VENV)], check=True)
        proc = subprocess.run([str(python), "-m", "pip", "install", "-q", "toolong"],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            print("toolong could not be installed:", proc.stderr[-500:], file=sys.stderr)
            return None
    return str(python)


def package_version(python: str, name: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({name!r}))"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return out.stdout.strip() or "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--large", type=Path, default=REPO / "bench" / "work" / "large",
                        help="output of bench/make_large_capture.py")
    parser.add_argument("--events", type=int, default=10_000_000)
    args = parser.parse_args()
    if not (args.large / "bundle").is_dir():
        raise SystemExit(f"{args.large}/bundle missing: run sudo python3 "
                         "bench/make_large_capture.py first")
    table = prepare_table(args.large, args.events)
    text = prepare_text(args.large, args.events)
    load_before = os.getloadavg()
    kml = run_probe(sys.executable, KMLTRACE_PROBE, table)
    kml["preloaded"] = run_probe(sys.executable, PRELOADED_PROBE, table)
    toolong_py = toolong_python()
    toolong = run_probe(toolong_py, TOOLONG_PROBE, text) if toolong_py else {
        "error": "not installed"}
    result = {
        "input": {"table": str(table.relative_to(REPO)), "text": str(text.relative_to(REPO)),
                  "events": args.events,
                  "derived_from": "bench/work/large (bench/make_large_capture.py), replicated",
                  "sha256": {"table": sha256(table), "text": sha256(text)},
                  "bytes": {"table": table.stat().st_size, "text": text.stat().st_size}},
        "kmltrace": kml,
        "toolong": toolong,
        "goals": {"first_screen_s": 1.0, "page_move_ms": 50},
        "versions": {"kmltrace": package_version(sys.executable, "kmltrace"),
                     "textual": package_version(sys.executable, "textual"),
                     "polars": package_version(sys.executable, "polars"),
                     "toolong": package_version(toolong_py, "toolong") if toolong_py else None,
                     "toolong_textual": package_version(toolong_py, "textual")
                     if toolong_py else None,
                     "python": platform.python_version(), "cpus": os.cpu_count()},
        "terminal_size": list(SIZE),
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
        "command": "python bench/bench_tui.py" + (
            f" --events {args.events}" if args.events != 10_000_000 else ""),
        "measured_unix": int(time.time()),
        "note": "each tool in its own process, measured with Textual's pilot (headless); "
                "2 shared cores, other work ran on the machine at the same time",
    }
    save_result("tui", result)
    print(json.dumps({"kmltrace": kml, "toolong": toolong}, indent=2))


if __name__ == "__main__":
    main()
