"""A snapshot JSON as a TARGET: detected from content, parsed into meta, bad files named.

SYNTHETIC snapshot objects (shaped like CONTRACT.md's snapshot); the real one written from the
Debian guest's dump is parsed in tests/system/test_snapshot.py.
"""

from __future__ import annotations

import json

from kmltrace.formats import parse_path
from kmltrace.formats import snapshot as fmt

SNAP = {
    "kernel": {"release": "4.0.0-kml", "kml": True, "cpus": 2},
    "source": "synthetic",
    "cpus": [{"cpu": 0, "tss": {"sp0": "0x1", "sp1": "0x0", "sp2": "0x0", "ist": ["0x0"] * 7}}],
    "idt": [{"vector": 14, "handler": "0xffffffff81000e00", "selector": "0x10", "type": 14,
             "dpl": 0, "present": True, "ist": 5}],
    "tasks": [{"pid": 7, "tgid": 7, "comm": "[bold]\x1b[31mevil", "mode": "kernel",
               "cs": "0x7fff0013"}],
    "incidents": [],
}


def write(tmp_path, obj, name="snap.json"):
    path = tmp_path / name
    path.write_text(json.dumps(obj, indent=1))
    return path


def test_detected_from_content_and_parsed(tmp_path):
    parsed = parse_path(write(tmp_path, SNAP, name="no-extension"))
    assert parsed.format == "snapshot" and parsed.errors == []
    assert parsed.events.height == 0
    assert parsed.meta["snapshot"] == SNAP
    assert parsed.meta["idt"] == SNAP["idt"]
    assert (parsed.meta["cpus"], parsed.meta["kernel"]) == (2, "4.0.0-kml")
    # kernel strings stay data, byte for byte
    assert parsed.meta["snapshot"]["tasks"][0]["comm"] == "[bold]\x1b[31mevil"


def test_other_json_is_not_a_snapshot():
    assert not fmt.sniff(b'{"format_version": 1, "kind": "collect"}')
    assert not fmt.sniff(b'[{"kernel": {}}]')
    assert fmt.sniff(b'{\n "kernel": {\n  "release": "6.1"')


def test_truncated_snapshot_names_the_line(tmp_path):
    path = tmp_path / "cut.json"
    path.write_text(json.dumps(SNAP, indent=1)[:200])
    parsed = parse_path(path)
    assert parsed.format == "snapshot"
    [error] = parsed.errors
    assert error.path == str(path) and error.line is not None
    assert "not valid snapshot JSON" in error.message


def test_wrong_shapes_are_errors(tmp_path):
    bad = dict(SNAP, idt={"14": 5})
    [error] = parse_path(write(tmp_path, bad)).errors
    assert error.message == 'snapshot "idt" is not a list of objects'


def test_hostile_shapes_are_errors_not_tracebacks(tmp_path):
    cases = {
        "tasks[0].pid has the wrong type": dict(SNAP, tasks=[{"pid": "7", "mode": "kernel"}]),
        "cpus[0].tss has the wrong type": dict(SNAP, cpus=[{"cpu": 0, "tss": "x"}]),
        "tasks[0].sp is not a hex string": dict(SNAP, tasks=[{"pid": 7, "sp": 12}]),
        "cpus[0].tss.ist is not a list of hex strings":
            dict(SNAP, cpus=[{"cpu": 0, "tss": {"ist": ["0x1", None]}}]),
        "idt[0].vector has the wrong type": dict(SNAP, idt=[{"vector": True}]),
    }
    for message, snap in cases.items():
        [error] = parse_path(write(tmp_path, snap)).errors
        assert error.message == f"snapshot {message}"


def test_real_snapshots_of_the_debian_guest(samples):
    """sample_traces/snapshot-debian-6.1-guest: written by kmltrace snapshot from a real dump
    (PROVENANCE.md); snapwork's pid and frames from that boot's console line."""
    import re

    folder = samples / "snapshot-debian-6.1-guest"
    line = (folder / "console-snapwork.txt").read_text()
    pid, deep = (int(v, 0) for v in re.search(r"pid=(\d+) deep=(0x[0-9a-f]+)", line).groups())
    full = parse_path(folder / "snapshot.json")
    bare = parse_path(folder / "snapshot-no-dwarf.json")
    assert full.format == bare.format == "snapshot" and full.errors == bare.errors == []
    for parsed in (full, bare):
        snap = parsed.meta["snapshot"]
        assert len(snap["idt"]) == 256 and snap["incidents"] == []
        assert {g["vector"]: g["ist"] for g in snap["idt"] if g["ist"]} == {1: 3, 2: 2, 8: 1, 29: 5}
        task = {t["pid"]: t for t in snap["tasks"]}[pid]
        assert (task["comm"], task["mode"], task["cs"]) == ("snapwork", "user", "0x33")
        assert 0 < deep - int(task["sp"], 16) < 256
    assert "limits" in bare.meta["snapshot"] and "limits" not in full.meta["snapshot"]
