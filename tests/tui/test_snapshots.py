"""pytest-textual-snapshot pictures of every screen on the fixed synthetic session.

Regenerate after an intended change with ``pytest tests/tui/test_snapshots.py
--snapshot-update`` and look at the SVGs under __snapshots__/ before committing them."""

from __future__ import annotations

import pytest

from kmltrace.tui.app import KmltraceApp
from tests.tui import synthetic

SIZE = (120, 36)


def app():
    return KmltraceApp(["synthetic"], loaded=synthetic.loaded())


@pytest.mark.parametrize("name, keys", [
    ("incidents", []),
    ("incident_detail", ["enter"]),
    ("processes", ["2"]),
    ("timeline", ["3"]),
    ("timeline_per_process_zoomed", ["3", "p", "plus"]),
    ("events", ["4", "pagedown", "down"]),
    ("events_after_jump", ["enter", "j"]),
    ("snapshot_idt", ["5", "down", "down", "down"]),
    ("snapshot_tss", ["5", "s"]),
    ("help", ["question_mark"]),
    ("light_theme", ["t"]),
])
def test_screen(snap_compare, name, keys):
    assert snap_compare(app(), press=keys, terminal_size=SIZE)
