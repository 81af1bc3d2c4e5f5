"""Which vmcore TARGETs get a drgn snapshot: only dumps of a Linux kernel (a VMCOREINFO note).
The lab's dumps (real QEMU dumps of the scenario kernels, not Linux) keep the raw-dump snapshot;
the Debian guest's dump is covered in tests/system/test_snapshot.py."""

from __future__ import annotations

from kmltrace.capture import load
from kmltrace.collectors import snapshot as collector
from kmltrace.collectors.snapshot import has_vmcoreinfo


def test_lab_dumps_are_not_linux(samples):
    dumps = sorted(samples.glob("lab-*/vmcore.elf*"))
    assert dumps, "no lab dump among the samples"
    for dump in dumps:
        assert not has_vmcoreinfo(dump), dump


def test_lab_bundle_keeps_the_raw_dump_snapshot(samples, monkeypatch):
    def no_drgn(**_):
        raise AssertionError("drgn must not open a dump without VMCOREINFO")
    monkeypatch.setattr(collector, "snapshot", no_drgn)
    capture = load([samples / "lab-starvation-tcg"])
    [vmcore] = [p for p in capture.inputs if p.format == "vmcore"]
    assert vmcore.meta["snapshot"]["source"] == "guest memory dump"
    assert "drgn_snapshot_error" not in vmcore.meta


def test_not_a_dump(tmp_path):
    for name, data in (("empty", b""), ("text", b"hello\n"), ("elf32", b"\x7fELF\x01\x01")):
        path = tmp_path / name
        path.write_bytes(data)
        assert not has_vmcoreinfo(path)
    assert not has_vmcoreinfo(tmp_path / "missing")
