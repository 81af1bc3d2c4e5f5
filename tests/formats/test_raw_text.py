"""`raw` rendered on demand for binary-decoded events that carry none (formats/raw_text.py),
on the real 6.18 workload trace.dat, against the decoder's own full rendering."""

import polars as pl
import pytest

from kmltrace.formats import tracedat
from kmltrace.formats.raw_text import field_columns, with_raw_text
from tests.conftest import SAMPLES

TRACE = SAMPLES / "host-6.18-workload" / "trace.dat"
# the decoder names these fields after the core columns they would clash with
RENAMED = {"comm": "target_comm", "pid": "target_pid", "ret": "ret_irq"}


@pytest.fixture(scope="module")
def both():
    return (tracedat.parse(TRACE).events, tracedat.parse(TRACE, raw_text="all").events)


def _tokens(text: str) -> set[str]:
    out = set()
    for token in text.split(" "):
        name, _, value = token.partition("=")
        out.add(f"{RENAMED.get(name, name)}={value}")
    return out


def test_default_leaves_typed_events_without_raw(both):
    untyped, full = both
    typed = untyped.filter(pl.col("event").is_in(["sys_enter", "sys_exit", "page_fault_user",
                                                  "sched_switch"]))
    assert typed.height > 1000 and typed["raw"].null_count() == typed.height
    assert full["raw"].null_count() == 0


def test_rendered_text_has_the_fields_of_the_full_rendering(both):
    untyped, full = both
    rendered = with_raw_text(untyped)
    assert rendered["raw"].null_count() == 0
    missing = untyped["raw"].is_null()
    for event in rendered.filter(missing)["event"].unique().to_list():
        rows = (missing & (untyped["event"] == event)).arg_true()[:50].to_list()
        for row in rows:
            got, want = rendered["raw"][row], full["raw"][row]
            # signal_generate's renamed comm/pid; the same name=value pairs otherwise
            if event == "signal_generate" or event == "irq_handler_exit":
                assert _tokens(got) == _tokens(want), (event, got, want)
            else:
                assert set(got.split(" ")) == set(want.split(" ")), (event, got, want)
    # rows that had their own text keep it
    kept = ~missing
    assert (rendered["raw"].filter(kept) == untyped["raw"].filter(kept)).all()


def test_page_fault_text_in_hex_and_syscall_args_in_decimal(both):
    rendered = with_raw_text(both[0])
    fault = rendered.filter(pl.col("event") == "page_fault_user").row(0, named=True)
    assert f"address={fault['address']:#x}" in fault["raw"].split(" ")
    enter = rendered.filter(pl.col("event") == "sys_enter").row(0, named=True)
    assert f"args=[{','.join(str(a) for a in enter['args'])}]" in enter["raw"].split(" ")


def test_field_columns_skip_core_columns():
    schema = {"ts_ns": pl.Int64, "pid": pl.Int32, "comm": pl.String, "address": pl.UInt64,
              "id": pl.Int64, "target_pid": pl.Int32, "raw": pl.String}
    assert field_columns(schema) == ["address", "id", "target_pid"]
    frame = pl.DataFrame({"pid": [1, 2], "raw": [None, "x=1"], "id": [None, 3]},
                         schema={"pid": pl.Int32, "raw": pl.String, "id": pl.Int64})
    # a row with nothing to render stays null; text already there is kept
    assert with_raw_text(frame)["raw"].to_list() == [None, "x=1"]
