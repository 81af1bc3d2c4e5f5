"""Drive the app by keys with Textual's pilot and assert what is on screen.

The synthetic session (tests/tui/synthetic.py) covers the edge cases (hostile comm, a chain
ending in a reset, a KML snapshot); the real QEMU log of sample_traces/qemu-tiny is loaded
through the real loading worker.
"""

from __future__ import annotations

import shutil

from kmltrace.tui.app import KmltraceApp
from kmltrace.tui.events import EventsScreen
from kmltrace.tui.incident_detail import IncidentDetailScreen
from kmltrace.tui.table import EventTable
from tests.conftest import SAMPLES
from tests.tui import synthetic
from tests.tui.screen_text import screen_text, sync

SIZE = (140, 40)
STARVATION_LOG = SAMPLES / "qemu-tiny" / "starvation-int.log"


async def settle(app, pilot):
    await pilot.pause()
    await app.loading_done.wait()
    await app.workers.wait_for_complete()
    await pilot.pause()


@sync
async def test_incidents_listed_with_hostile_comm_literal():
    app = KmltraceApp(["synthetic"], loaded=synthetic.loaded())
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        text = screen_text(app)
        assert "3 of 3 incidents" in text
        assert "triple_fault" in text and "fault_storm" in text
        # the comm is shown as typed, brackets and all, never taken as markup
        assert synthetic.HOSTILE_COMM in text


@sync
async def test_sort_and_filter_incidents_by_keys():
    app = KmltraceApp(["synthetic"], loaded=synthetic.loaded())
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("s")                      # severity -> kind
        await pilot.pause()
        lines = [line for line in screen_text(app).splitlines() if "pid 100 runs" in line
                 or "200 faults" in line or "CPU 0 reset" in line]
        assert [("fault_storm" in l, "kernel_mode" in l, "triple" in l) for l in lines] == [
            (True, False, False), (False, True, False), (False, False, True)]
        await pilot.press("f", *"severity=critical", "enter")
        await pilot.pause()
        text = screen_text(app)
        assert "1 of 3 incidents" in text
        assert "fault_storm" not in text


@sync
async def test_detail_shows_chain_and_jump_to_evidence_event():
    app = KmltraceApp(["synthetic"], loaded=synthetic.loaded())
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("enter")                  # the critical triple fault is first
        await settle(app, pilot)
        assert isinstance(app.screen, IncidentDetailScreen)
        text = screen_text(app)
        assert "The #PF gate has IST 0" in text
        assert "#PF  vec 14  CPL 0  stack same" in text
        assert "rip 0x401020 <main+0x20>  rsp 0x7ffd0000ff8  cr2 0x7ffd0000ff0" in text
        assert "#DF  vec  8  CPL 0  stack ist1" in text
        assert "RESET" in text
        assert "[bold]x[/x]-100 page_fault" in text      # evidence text, literally
        await pilot.press("enter")                  # first evidence row: ftrace line 212
        await settle(app, pilot)
        assert isinstance(app.screen, EventsScreen)
        table = app.screen.query_one(EventTable)
        assert table.cursor_row == 200              # line 212 is row 200 (line = row + 12)
        assert "line=212" in screen_text(app)
        await pilot.press("1")                      # back to the incidents mode: detail kept
        await pilot.pause()
        assert isinstance(app.screen, IncidentDetailScreen)
        await pilot.press("down", "j")              # second evidence row: line 16 -> row 4
        await settle(app, pilot)
        assert app.screen.query_one(EventTable).cursor_row == 4


@sync
async def test_event_view_paging_filter_search_goto():
    app = KmltraceApp(["synthetic"], loaded=synthetic.loaded())
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("4")
        await settle(app, pilot)
        table = app.screen.query_one(EventTable)
        assert "400 events" in screen_text(app)
        page = table.page_rows
        await pilot.press("pagedown")
        await pilot.pause()
        assert table.cursor_row == page
        assert table.visible_text()[0].startswith("1000.000%03d" % (page * 10))
        await pilot.press("end")
        await pilot.pause()
        assert table.cursor_row == 399
        # filter: only pid 200 (odd rows)
        await pilot.press("f", *"pid=200", "enter")
        await settle(app, pilot)
        assert "200 of 400 events" in screen_text(app)
        assert all(" 200 " in line for line in table.visible_text())
        # a bad query is reported, the view keeps working
        await pilot.press("f", *"pid=abc", "enter")
        await settle(app, pilot)
        assert "pid must be a number" in screen_text(app)
        await pilot.press("escape")
        assert table.row_count == 200
        # incremental search: row k's detail reads address=0x{k}
        await pilot.press("f", "ctrl+u", "enter")
        await settle(app, pilot)
        assert table.row_count == 400
        await pilot.press("home", "slash", *"address=0x25")   # incremental: no Enter
        await pilot.pause(0.6)
        await settle(app, pilot)
        assert table.cursor_row == 25
        await pilot.press("escape", "home", "slash", "ctrl+u", *"address=0x37", "enter")
        await settle(app, pilot)
        assert table.cursor_row == 37
        await pilot.press("n")
        await settle(app, pilot)
        assert table.cursor_row == 370            # next: address=0x370
        await pilot.press("N")
        await settle(app, pilot)
        assert table.cursor_row == 37
        # go to time 1000.00100 s = row 100
        await pilot.press("g", *"1000.001", "enter")
        await settle(app, pilot)
        assert table.cursor_row == 100


@sync
async def test_processes_timeline_snapshot_help_theme():
    app = KmltraceApp(["synthetic"], loaded=synthetic.loaded())
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("2")
        await settle(app, pilot)
        text = screen_text(app)
        assert "kernel" in text and "/trusted/[red]w" in text
        assert "faults at CPL 0 in /trusted" in text
        await pilot.press("3")
        await settle(app, pilot)
        text = screen_text(app)
        assert "CPU 0" in text and "CPU 1" in text and "per CPU" in text
        before = text
        await pilot.press("plus")
        await pilot.pause()
        assert "1.995 ms" in screen_text(app)       # 3.990 ms window halved
        await pilot.press("p")
        await pilot.pause()
        assert "pid 100" in screen_text(app) and "per process" in screen_text(app)
        await pilot.press("0")
        await pilot.pause()
        assert "3.990 ms" in screen_text(app) and before != screen_text(app)
        await pilot.press("5")
        await settle(app, pilot)
        text = screen_text(app)
        assert "5.4.0-kml" in text and "253 gates without IST" in text   # 256 minus NMI,#DF,#MC
        await pilot.press("s")
        await pilot.pause()
        assert "0xfffffe0000002000" in screen_text(app)
        await pilot.press("k")
        await pilot.pause()
        assert "0xffff88807fc00000" in screen_text(app)
        await pilot.press("question_mark")
        await pilot.pause()
        assert "Jump to event" in screen_text(app) and "Zoom in" in screen_text(app)
        await pilot.press("escape", "t")
        await pilot.pause()
        assert app.theme == "kmltrace-light"


@sync
async def test_real_qemu_log_loads_in_worker():
    """sample_traces/qemu-tiny/starvation-int.log: #PF (v=0e, line 477) then #DF (v=08, line
    499) then the triple fault (line 521), per its PROVENANCE.md."""
    app = KmltraceApp([str(STARVATION_LOG)])
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        assert app.fraction == 1.0
        await pilot.press("4")
        await settle(app, pilot)
        text = screen_text(app)
        assert "triple_fault" in text and "exception" in text
        await pilot.press("slash", *"v=0e", "enter")
        await settle(app, pilot)
        row = app.screen.query_one(EventTable).row_dict(app.screen.query_one(EventTable)
                                                         .cursor_row)
        assert row["line"] == 477 and row["vector"] == 14 and row["address"] == 0x40000FF8


@sync
async def test_bad_target_is_reported_not_raised(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\x01 not a trace \xff" * 10)
    app = KmltraceApp([str(junk)])
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        assert "not a supported format" in screen_text(app)
        # every screen copes with a capture of no events
        for key, shown in (("2", "no processes"), ("3", "no timed events"), ("4", "0 events"),
                           ("5", "no snapshot")):
            await pilot.press(key)
            await settle(app, pilot)
            assert shown in screen_text(app), key
        await pilot.press("3", "plus", "p", "4", "pagedown", "end", "slash", "x", "enter",
                          "g", "1", "enter")
        await settle(app, pilot)
        assert app.is_running
        # the go-to-time in an empty table is reported, like the input
        assert len(app.loaded.errors) == 2 and app.loaded.errors[-1] == "no event at or after 1"


@sync
async def test_picker_lists_traces_and_opens_one(tmp_path, monkeypatch):
    shutil.copy(STARVATION_LOG, tmp_path / "starvation-int.log")
    (tmp_path / "notes.bin").write_bytes(b"\x00" * 64)       # not a trace: left out
    app = KmltraceApp([], directory=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        text = screen_text(app)
        assert "starvation-int.log" in text and "qemu_log" in text
        assert "notes.bin" not in text
        await pilot.press("enter")
        await settle(app, pilot)
        assert app.loaded.events.height == 6
        assert "starvation-int.log" in screen_text(app)


LAB_STARVATION = SAMPLES / "lab-starvation-tcg"


@sync
async def test_real_lab_capture_incident_evidence_and_jump():
    """sample_traces/lab-starvation-tcg (real QEMU run, PROVENANCE.md): #PF at CPL 0 with
    CR2 0x7fffffffdff8 below RSP 0x7fffffffe000 (qemu.log line 58), #DF (line 80), triple
    fault (line 102), reset."""
    app = KmltraceApp([str(LAB_STARVATION)])
    async with app.run_test(size=(160, 45)) as pilot:
        await settle(app, pilot)
        text = screen_text(app)
        assert "critical  triple_fault" in text          # sorted by severity: first row
        await pilot.press("f", *"kind=triple_fault", "enter", "enter")
        await settle(app, pilot)
        assert isinstance(app.screen, IncidentDetailScreen)
        text = screen_text(app)
        assert "#PF  vec 14  CPL 0  stack same  not delivered" in text
        assert "rsp 0x7fffffffe000  cr2 0x7fffffffdff8" in text
        assert "#DF  vec  8  CPL 0  stack same" in text
        assert "RESET" in text
        assert "qemu.log  58" in text and "v=0e e=0002" in text      # line 58's own text
        await pilot.press("enter")
        await settle(app, pilot)
        assert isinstance(app.screen, EventsScreen)
        table = app.screen.query_one(EventTable)
        row = table.row_dict(table.cursor_row)
        assert (row["line"], row["vector"], row["address"]) == (58, 14, 0x7FFFFFFFDFF8)
        assert "line=58" in screen_text(app)


HOST_TRACE = SAMPLES / "host-6.18-workload" / "trace.txt"


@sync
async def test_real_host_trace_processes_timeline_and_filter():
    """sample_traces/host-6.18-workload/trace.txt (expected.json, from the workload's own
    output): kmlwork pid 22998 and its child 23000; the child calls getppid (110) 53 times and
    faults on 31 heap pages."""
    app = KmltraceApp([str(HOST_TRACE)])
    async with app.run_test(size=(160, 45)) as pilot:
        await settle(app, pilot)
        await pilot.press("2")
        await settle(app, pilot)
        text = screen_text(app)
        assert any("22998" in line and "kmlwork" in line and "user" in line
                   for line in text.splitlines())
        assert sum(app.screen._rates.get(23000, [])) >= 31
        await pilot.press("3")
        await settle(app, pilot)
        text = screen_text(app)
        # every line of trace.txt is on CPU 1 ("[001]"): one lane; the legend names the pids
        assert "CPU 1" in text and "CPU 0" not in text
        assert "=22998" in text and "=23000" in text
        await pilot.press("4", "f", *"pid=23000 event=sys_enter id = 110", "enter")
        await settle(app, pilot)
        assert "53 of " in screen_text(app)


SNAPSHOT = SAMPLES / "snapshot-debian-6.1-guest" / "snapshot.json"


@sync
async def test_real_snapshot_idt_tss_tasks():
    """sample_traces/snapshot-debian-6.1-guest (PROVENANCE.md): Debian 6.1, 2 CPUs, not KML,
    mainline IST layout #DF 1, NMI 2, #DB 3; pid 1 is busybox."""
    app = KmltraceApp([str(SNAPSHOT)])
    async with app.run_test(size=(160, 45)) as pilot:
        await settle(app, pilot)
        await pilot.press("5")
        await settle(app, pilot)
        text = screen_text(app)
        assert "kernel 6.1.0-56-cloud-amd64  not KML  2 CPUs" in text
        rows = {line.split()[0]: line.split() for line in text.splitlines()
                if line.split() and line.split()[0].isdigit()}
        assert rows["8"][1] == "#DF" and rows["8"][4] == "1"
        assert rows["2"][1] == "NMI" and rows["2"][4] == "2"
        assert rows["1"][1] == "#DB" and rows["1"][4] == "3"
        assert rows["14"][1] == "#PF" and rows["14"][4] == "0"
        await pilot.press("s")
        await pilot.pause()
        tss = [line.split() for line in screen_text(app).splitlines()
               if line.split()[:1] in (["0"], ["1"])]
        assert [r[0] for r in tss] == ["0", "1"]          # one TSS row per CPU
        await pilot.press("k")
        await pilot.pause()
        assert any(line.split()[:4] == ["1", "1", "busybox", "user"]
                   for line in screen_text(app).splitlines())


@sync
async def test_command_palette_and_mouse():
    app = KmltraceApp(["synthetic"], loaded=synthetic.loaded())
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("ctrl+p", *"show events")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await settle(app, pilot)
        assert isinstance(app.screen, EventsScreen)
        table = app.screen.query_one(EventTable)
        # a click on the 6th data row (the header is line 0 of the table) moves the cursor
        await pilot.click(EventTable, offset=(5, 6))
        await pilot.pause()
        assert table.cursor_row == 5
        assert "line=17" in screen_text(app)                # row 5 is line 17


def test_escape_codes_in_cells_are_shown_not_sent():
    from kmltrace.tui.table import format_cell

    assert format_cell("comm", "\x1b[2Jevil") == "\\x1b[2Jevil"
    assert format_cell("raw", "a\nb") == "a\\x0ab"


@sync
async def test_ingested_parquet_table_opens_and_filters(tmp_path):
    path = tmp_path / "events.parquet"
    synthetic.events().write_parquet(path)
    app = KmltraceApp([str(path)])
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("4", "f", *"pid=100", "enter")
        await settle(app, pilot)
        assert "200 of 400 events" in screen_text(app)
