"""Analyses say by name which events they lack (SYNTHETIC context)."""

import pytest

from kmltrace.analysis.requirements import Needs, requires_events
from kmltrace.errors import MissingEventsError


class Ctx:
    def __init__(self, names):
        self.available_events = set(names)


@requires_events("sys_enter", any_of=(("page_fault_user", "exception"),))
def needs_both(ctx):
    return "ran"


def test_runs_when_everything_is_there():
    assert needs_both(Ctx({"sys_enter", "exception"})) == "ran"


def test_names_every_missing_event():
    with pytest.raises(MissingEventsError) as info:
        needs_both(Ctx({"sched_switch"}))
    assert "sys_enter" in str(info.value) and "page_fault_user or exception" in str(info.value)
    assert Needs(("a", "b")).missing({"a"}) == ["b"]
