"""`kmltrace report`, `postmortem` and `export` from the command line: exit codes, JSON on
stdout, Markdown and terminal output safe for hostile names."""

import json

from click.testing import CliRunner

from kmltrace.cli import main
from kmltrace.report import render_markdown
from tests.conftest import SAMPLES

WORKLOAD = SAMPLES / "host-6.18-workload"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_report_json_has_the_contract_keys_and_exit_0():
    result = run("report", WORKLOAD / "bundle", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {"inputs", "processes", "incidents", "in_flight"} <= set(report)
    assert "chains" not in report
    for row in report["processes"]:
        assert row["mode"] in ("kernel", "user", "kthread", "unknown")


def test_postmortem_fills_chains_and_chain():
    result = run("postmortem", SAMPLES / "qemu-tiny" / "fault-loop-head.log", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert "chains" in report and "chain" in report
    assert any(i["kind"] == "fault_loop" for i in report["incidents"])


def test_unusable_input_exits_1_and_still_prints_the_others(tmp_path):
    bad = tmp_path / "garbage.bin"
    bad.write_bytes(b"\x00\x01\x02 not a trace")
    result = run("report", bad, WORKLOAD / "trace.txt", "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    by_path = {i["path"]: i for i in report["inputs"]}
    assert by_path[str(bad)]["errors"] and by_path[str(WORKLOAD / "trace.txt")]["events"] > 0
    assert "garbage.bin" in result.stderr


def test_hostile_comm_is_escaped_in_markdown_and_terminal(tmp_path):
    trace = tmp_path / "trace.txt"
    # SYNTHETIC: one tracefs text line whose comm is rich markup with a pipe and an escape
    trace.write_text("# tracer: nop\n#\n"
                     "  [bold]|x\x1b[31m-4242  [000] d....   100.000001: page_fault_user: "
                     "address=0x1000 ip=0x401000 error_code=0x6\n")
    result = run("report", trace)
    assert result.exit_code == 0, result.output
    assert "\x1b[31m" not in result.stdout and "\\x1b" in result.stdout
    md = run("report", trace, "--markdown").stdout
    assert "\x1b" not in md and "\\|x" in md


def test_markdown_escapes_table_pipes():
    md = render_markdown({"inputs": [], "incidents": [], "processes": [
        {"pid": 1, "comm": "a|b", "mode": "user", "page_faults": 0, "evidence": ["e"]}]})
    assert "a\\|b" in md


def test_export_chrome_json(tmp_path):
    out = tmp_path / "trace.json"
    result = run("export", WORKLOAD / "bundle", "--format", "chrome-json", "-o", out)
    assert result.exit_code == 0, result.output
    events = json.loads(out.read_text())["traceEvents"]
    expected = json.loads((WORKLOAD / "expected.json").read_text())
    getppid = [e for e in events if e["ph"] == "X" and e["name"] == "syscall 110"
               and e["tid"] == expected["pid"]]
    assert len(getppid) == expected["M"]
    assert all(e["dur"] >= 0 for e in getppid)
    names = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert names[expected["pid"]] == "kmlwork"
    faults = [e for e in events if e["ph"] == "i" and e["name"] == "page_fault_user"]
    assert faults and all(f["args"]["address"].startswith("0x") for f in faults)


def test_an_analysis_that_fails_is_reported_not_a_traceback(monkeypatch):
    from kmltrace.analysis import gs

    def broken(ctx):
        raise RuntimeError("synthetic failure")

    monkeypatch.setattr(gs, "gs_incidents", broken)
    monkeypatch.delenv("KMLTRACE_DEBUG", raising=False)
    result = run("report", WORKLOAD / "trace.txt", "--json")
    assert result.exit_code == 0
    status = {a["name"]: a for a in json.loads(result.stdout)["analyses"]}
    assert status["gs_write"]["ran"] is False and "synthetic failure" in status["gs_write"]["note"]
    assert status["fault_loop"]["ran"] is True


def test_report_on_an_ingested_table_matches_the_report_on_its_sources(tmp_path):
    """An event table written by `kmltrace ingest` (here with QEMU rows after the timed ones)
    is analysed like its sources: same processes, same incidents."""
    from kmltrace.capture import Capture
    from kmltrace.formats import Parsed
    from kmltrace.report import build_report
    import polars as pl

    sources = [WORKLOAD / "trace.txt", SAMPLES / "qemu-tiny" / "starvation-int.log"]
    table = tmp_path / "events.parquet"
    assert run("ingest", *sources, "-o", table).exit_code == 0
    direct = json.loads(run("report", *sources, "--json").stdout)
    ingested = build_report(Capture(inputs=[Parsed(path=str(table), format="parquet",
                                                   events=pl.read_parquet(table))]))
    key = lambda r: [(p["pid"], p.get("image"), p["mode"], p["page_faults"]) for p in r["processes"]]
    assert key(ingested) == key(direct)
    assert [i["kind"] for i in ingested["incidents"]] == [i["kind"] for i in direct["incidents"]]


def test_postmortem_terminal_output_draws_the_chain_and_explains_it():
    """The lab's starvation run (its source: #PF at starve_push, then #DF, then the reset)
    is drawn as a chain, one exception a row, then RESET, with the plain-words explanation."""
    result = CliRunner().invoke(main, ["postmortem", str(SAMPLES / "lab-starvation-tcg")],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = result.output
    chain = out[out.index("Fault chain 1"):]
    rows = [line for line in chain.splitlines() if line.startswith("│")]
    assert "#PF (14)" in rows[0] and "starve_push" in rows[0] and "same" in rows[0]
    assert "#DF (8)" in rows[1]
    assert "RESET" in rows[3]
    assert "stack_starvation: At CPL 0" in out
