"""Event format, header_page and header_event texts: the real 6.18 ones of the workload sample's
bundle, and hand-made broken ones (synthetic) for the errors."""

from __future__ import annotations

import pytest

from kmltrace.errors import InputError
from kmltrace.formats.event_format import (parse_format, parse_header_event,
                                           parse_header_page)

from tests.conftest import SAMPLES

FTRACE = SAMPLES / "host-6.18-workload" / "bundle" / "ftrace"


def _fmt(system: str, event: str):
    path = FTRACE / "events" / system / event / "format"
    return parse_format(path.read_text(), system=system, path=str(path))


def test_sched_switch_fields():
    f = _fmt("sched", "sched_switch")
    assert (f.system, f.name) == ("sched", "sched_switch")
    assert [x.name for x in f.own_fields] == ["prev_comm", "prev_pid", "prev_prio", "prev_state",
                                              "next_comm", "next_pid", "next_prio"]
    comm = f.field("prev_comm")
    assert (comm.offset, comm.size, comm.array_len, comm.is_string) == (8, 16, 16, True)
    state = f.field("prev_state")
    assert (state.type, state.offset, state.size, state.signed) == ("long", 32, 8, True)
    assert f.field("common_pid").signed and f.field("common_pid").offset == 4
    assert "__print_flags" in f.print_fmt
    assert f.fixed_size == 64


def test_sys_enter_array_and_ids():
    f = _fmt("raw_syscalls", "sys_enter")
    args = f.field("args")
    assert (args.offset, args.size, args.array_len, args.element_size, args.signed) == \
        (16, 48, 6, 8, False)
    assert not args.is_string
    assert f.field("id").signed and f.field("id").size == 8


def test_data_loc_and_flexible_array():
    exec_ = _fmt("sched", "sched_process_exec").field("filename")
    assert exec_.data_loc and exec_.dynamic and exec_.is_string and exec_.size == 4
    buf = _fmt("ftrace", "print").field("buf")
    assert buf.array_len == 0 and buf.is_string and not buf.dynamic and buf.offset == 16


def test_rel_loc_synthetic():
    text = ("name: x\nID: 7\nformat:\n"
            "\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n"
            "\tfield:__rel_loc u32[] vals;\toffset:8;\tsize:4;\tsigned:0;\n")
    f = parse_format(text, system="synthetic")
    vals = f.field("vals")
    assert vals.rel_loc and not vals.data_loc and vals.element_size == 4 and not vals.is_string


def test_header_page_and_event():
    h = parse_header_page((FTRACE / "header_page").read_text())
    assert (h.timestamp_offset, h.commit_offset, h.commit_size, h.data_offset, h.data_size) == \
        (0, 8, 8, 16, 4080)
    assert h.page_size == 4096
    e = parse_header_event((FTRACE / "header_event").read_text())
    assert (e.padding, e.time_extend, e.time_stamp, e.data_max_type_len) == (29, 30, 31, 28)


def test_header_event_other_layout_refused():
    text = (FTRACE / "header_event").read_text().replace("5 bits", "6 bits")
    with pytest.raises(InputError, match="unsupported ring-buffer event header"):
        parse_header_event(text, path="header_event")


def test_header_page_without_commit():
    text = "\tfield: u64 timestamp;\toffset:0;\tsize:8;\tsigned:0;\n"
    with pytest.raises(InputError, match="commit") as info:
        parse_header_page(text, path="hp")
    assert info.value.path == "hp"


def test_broken_field_line_names_file_and_line():
    path = FTRACE / "events" / "raw_syscalls" / "sys_exit" / "format"
    lines = path.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if "field:long ret" in line)
    lines[at] = "\tfield:long ret;\toffset:x;\tsize:8;"     # synthetic damage
    with pytest.raises(InputError) as info:
        parse_format("\n".join(lines), path="sys_exit/format")
    assert info.value.line == at + 1
    assert str(info.value).startswith(f"sys_exit/format:{at + 1}: ")


@pytest.mark.parametrize("text", ["", "hello\n", "name: x\nformat:\n"])
def test_not_a_format(text):
    with pytest.raises(InputError, match="not an event format"):
        parse_format(text, path="f")


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from kmltrace.errors import KmltraceError  # noqa: E402


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_fuzz_format_text(text):
    # anything that is not a format is refused with the project's error, never a traceback
    for parser in (parse_format, parse_header_page, parse_header_event):
        try:
            parser(text, path="fuzz")
        except KmltraceError:
            pass


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10_000), st.characters()), max_size=8))
def test_fuzz_mutated_real_format(changes):
    text = list((FTRACE / "events" / "sched" / "sched_switch" / "format").read_text())
    for at, ch in changes:
        text[at % len(text)] = ch
    try:
        parse_format("".join(text), path="fuzz")
    except KmltraceError:
        pass
