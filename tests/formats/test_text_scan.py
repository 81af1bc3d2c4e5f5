"""The C line scanner (formats/_textscan.c via text_scan.py) against the polars pipeline it
accelerates: on every real text sample, on batch ends that cut stack traces, and on fuzzed
documents, both give the same table, errors and metadata."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kmltrace.errors import KmltraceError
from kmltrace.formats import ftrace_text, perf_script, sniff, text_scan, tracecmd_report
from kmltrace.formats.text_pipeline import in_column_order
from tests.conftest import require_accelerator
from tests.fuzzing import documents_from

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_traces"
TEXT_FORMATS = {"ftrace_text", "tracecmd_report", "perf_script"}
MODULES = {"ftrace_text": ftrace_text, "tracecmd_report": tracecmd_report,
           "perf_script": perf_script}


def _text_samples() -> list[Path]:
    found = []
    for path in sorted(SAMPLES.rglob("*")):
        if not path.is_file() or path.suffix not in (".txt", ".log"):
            continue
        if path.name in ("PROVENANCE.md", "README.md"):
            continue
        try:
            module = sniff.detect(path)
        except Exception:
            continue
        if module.NAME in TEXT_FORMATS:
            found.append(path)
    return found


SAMPLE_FILES = _text_samples()


def _scanner_or_skip():
    require_accelerator("_textscan")


def _both(path: Path, module=None, **options):
    """(pure, scanned) results of parsing `path` (a refusal is a result too)."""
    module = module or sniff.detect(path)
    results = []
    for pure in ("1", "0"):
        os.environ["KMLTRACE_PURE"] = pure
        try:
            if options:
                # the two paths may end their batches on different lines (the scanner's piece
                # ends where its last taken line is): the rows are the same, the order in
                # which their columns first appear may not be, hence in_column_order
                parse = module.text_parse(path, **options)
                frames = list(parse.batches())
                events = (in_column_order(pl.concat(frames, how="diagonal_relaxed"))
                          if frames else None)
                results.append((events, parse.errors, parse.meta))
            else:
                parsed = module.parse(path)
                results.append((parsed.events, parsed.errors, parsed.meta))
        except KmltraceError as e:
            results.append((None, [e], {}))
        finally:
            os.environ.pop("KMLTRACE_PURE", None)
    return results


def _assert_same(pure, scanned):
    (events_a, errors_a, meta_a), (events_b, errors_b, meta_b) = pure, scanned
    assert [str(e) for e in errors_b] == [str(e) for e in errors_a]
    assert meta_b == meta_a
    if events_a is None or events_b is None:
        assert (events_a is None or events_a.height == 0) and (events_b is None
                                                               or events_b.height == 0)
        return
    assert events_b.columns == events_a.columns
    assert events_b.schema == events_a.schema
    assert events_b.equals(events_a)


def test_the_scanner_is_built_where_a_compiler_is():
    # CI installs with gcc and Python's headers: the accelerated path must be what runs
    _scanner_or_skip()
    assert text_scan.scanner() is not None


def test_samples_are_found():
    # the real samples of all three text formats are in the comparison below
    formats = {sniff.detect(p).NAME for p in SAMPLE_FILES}
    assert formats == TEXT_FORMATS
    assert len(SAMPLE_FILES) >= 25


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: str(p.relative_to(SAMPLES)))
def test_every_real_sample_gives_the_same_table(path):
    _scanner_or_skip()
    pure, scanned = _both(path)
    assert pure[0] is not None and pure[0].height > 0
    _assert_same(pure, scanned)


@pytest.mark.parametrize("module, name, batch", [
    (ftrace_text, "host-6.18-workload/trace.txt", 16 * 1024),
    (tracecmd_report, "host-6.18-workload/trace-cmd-report.txt", 7 * 1024),
    (perf_script, "host-6.18-workload/perf-script-ns.txt", 16 * 1024),
    (ftrace_text, "public-4.x/arm32-4.x-function-stacktrace.txt", 200),
    (ftrace_text, "host-6.18-textvariants/trace_pipe-lost.txt", 3000),
])
def test_small_pieces_give_the_same_batches(module, name, batch):
    """Piece ends fall inside lines, stack traces and lost-event runs."""
    _scanner_or_skip()
    pure, scanned = _both(SAMPLES / name, module, batch_bytes=batch)
    _assert_same(pure, scanned)


def _real_lines(*names: str) -> list[str]:
    lines: list[str] = []
    for name in names:
        text = (SAMPLES / name).read_text(errors="replace")
        lines += [line for line in text.splitlines() if line.strip()][:400]
    return lines


_TRACEFS_LINES = _real_lines("host-6.18-workload/trace.txt", "host-6.18-textvariants/trace-tgid.txt",
                             "public-4.x/arm32-4.x-function-stacktrace.txt")
_PERF_LINES = _real_lines("host-6.18-workload/perf-script.txt")
_REPORT_LINES = _real_lines("host-6.18-workload/trace-cmd-report.txt")

# field text near the canonical forms the scanner decodes (sys_enter/exit, page faults,
# vectors): numbers of every size and sign, hex and symbols, separators slightly off
_number = st.one_of(st.integers(-(2 ** 70), 2 ** 70).map(str),
                    st.text("0123456789-", min_size=0, max_size=22))
_hex = st.one_of(st.integers(0, 2 ** 68).map(lambda n: f"{n:x}"),
                 st.text("0123456789abcdefABCDEFx ", min_size=0, max_size=20))
_sep = st.sampled_from([", ", ",", " , ", ", ,", ""])
_field_texts = st.one_of(
    st.builds(lambda n, items, sep, tail: f"NR {n} ({sep.join(items)}){tail}", _number,
              st.lists(_hex, max_size=8), _sep, st.sampled_from(["", " x", ")"])),
    st.builds(lambda n, r, tail: f"NR {n} = {r}{tail}", _number, _number,
              st.sampled_from(["", " ", "x"])),
    st.builds(lambda a, i, e, tail: f"address={a} ip={i} error_code={e}{tail}",
              st.one_of(_hex.map(lambda h: "0x" + h), st.text(max_size=8)),
              st.one_of(_hex.map(lambda h: "0x" + h), st.sampled_from(
                  ["do_user_addr_fault+0x1f2/0x5c0", "elf_load", "0x", ""])),
              st.one_of(_hex.map(lambda h: "0x" + h), _hex), st.sampled_from(["", " ", " y"])),
    st.builds(lambda n: f"vector={n}", _number),
)
_events = st.sampled_from(["sys_enter", "sys_exit", "page_fault_user", "page_fault_kernel",
                           "local_timer_entry", "tracing_mark_write", "sched_switch"])
# the function tracer's "func <-parent" lines: symbols, hex, spacing slightly off
_function_part = st.one_of(st.sampled_from(["do_user_addr_fault", "exc_page_fault+0x1f/0x60",
                                            "0x", "", "<-", "a b"]),
                           _hex.map(lambda h: "0x" + h))
_function_symbol = st.one_of(st.sampled_from(["do_user_addr_fault", "exc_page_fault+0x1f/0x60"]),
                             _hex.map(lambda h: "0x" + h))
_function_bodies = st.one_of(
    st.builds(lambda a, b: f"{a} <-{b}", _function_symbol, _function_symbol),
    st.builds(lambda a, sep, b: f"{a}{sep}{b}", _function_part,
              st.sampled_from([" <-", " <- ", "  <-", " <--", "<-", " -"]), _function_part))
_function_lines = st.builds(
    lambda comm, body: f"{comm:>16}-2848  [002] ....  9731.927346: {body}",
    st.sampled_from(["stat_file_proc", "sh"]), _function_bodies)
_tracefs_field_lines = st.builds(
    lambda comm, pid, ev, text: f"{comm:>16}-{pid:<7} [001] d..1.   858.103341: {ev}: {text}",
    st.sampled_from(["kmlwork", "sh", "a-1 b", "x"]), st.integers(0, 2 ** 31), _events,
    _field_texts)
_perf_field_lines = st.builds(
    lambda pid, ev, text: f"         kmlwork {pid} [000]   858.018497002:   raw_syscalls:{ev}: {text}",
    st.integers(0, 99999), _events, _field_texts)


def _fuzz_both(tmp_path, module, data: bytes):
    path = tmp_path / "fuzz.txt"
    path.write_bytes(data)
    pure, scanned = _both(path, module)
    _assert_same(pure, scanned)


_FUZZ = settings(max_examples=60, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture,
                                        HealthCheck.too_slow])


@_FUZZ
@given(data=st.one_of(documents_from(_TRACEFS_LINES, 30),
                      st.lists(st.one_of(_tracefs_field_lines, _function_lines),
                               min_size=1, max_size=20)
                      .map(lambda ls: ("\n".join(ls) + "\n").encode())))
def test_fuzzed_tracefs_text_gives_the_same_table(tmp_path, data):
    _scanner_or_skip()
    _fuzz_both(tmp_path, ftrace_text, data)


@_FUZZ
@given(data=st.one_of(documents_from(_PERF_LINES, 30),
                      st.lists(_perf_field_lines, min_size=1, max_size=20)
                      .map(lambda ls: ("\n".join(ls) + "\n").encode())))
def test_fuzzed_perf_script_text_gives_the_same_table(tmp_path, data):
    _scanner_or_skip()
    _fuzz_both(tmp_path, perf_script, data)


@_FUZZ
@given(data=documents_from(_REPORT_LINES, 30))
def test_fuzzed_trace_cmd_report_text_gives_the_same_table(tmp_path, data):
    _scanner_or_skip()
    _fuzz_both(tmp_path, tracecmd_report, b"cpus=2\n" + data)


_GRAMMARS = st.sampled_from(["tracefs", "tracecmd", "perf"])


@settings(max_examples=300, deadline=None)
@given(data=st.one_of(st.binary(max_size=3000),
                      st.lists(st.sampled_from(_TRACEFS_LINES + _PERF_LINES + _REPORT_LINES),
                               max_size=40).map(lambda ls: "\n".join(ls).encode())),
       grammar=_GRAMMARS, first=st.integers(1, 2 ** 40))
def test_every_line_is_taken_or_handed_back_once(data, grammar, first):
    """The scanner on any bytes: no crash, and each line is either a row or deferred, once."""
    _scanner_or_skip()
    module = text_scan.scanner()
    how = text_scan.setup(module, grammar, ftrace_text.RENAMED_EVENTS)
    scanned = text_scan.scan(data, module, first, how, (b"buf: ",))
    lines = data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
    assert scanned.lines == lines
    taken = scanned.fast.get_column("line").to_list()
    handed = scanned.deferred.get_column("line").to_list()
    assert sorted(taken + handed) == list(range(first, first + lines))
    if scanned.first_nul is not None:
        assert b"\x00" in data
