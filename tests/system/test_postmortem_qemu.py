"""Rebuild the tiny kernel of sample_traces/qemu-tiny from its committed source, run it under
QEMU TCG with -d int,cpu_reset, and check that the fresh log gives the chain tiny.S makes:
#PF at CPL 0 (RSP 0x40001000, CR2 0x40000ff8, at `starve`) -> #DF -> triple fault."""

from __future__ import annotations

import subprocess

from kmltrace import capture as capture_mod
from kmltrace.analysis.chains import analyse_chains
from kmltrace.analysis.events import merged_events
from tests.conftest import SAMPLES, require_binary, require_qemu

TINY = SAMPLES / "qemu-tiny"


def _build(tmp_path, scenario: int):
    for tool in ("gcc", "ld", "objcopy"):
        require_binary(tool)
    obj, elf, mb = (tmp_path / f"tiny{scenario}{ext}" for ext in (".o", ".elf", ".mb"))
    subprocess.run(["gcc", "-c", f"-DSCENARIO={scenario}", "-o", str(obj), str(TINY / "tiny.S")],
                   check=True)
    subprocess.run(["ld", "-m", "elf_x86_64", "-T", str(TINY / "tiny.ld"), "-o", str(elf),
                    str(obj)], check=True, capture_output=True)
    subprocess.run(["objcopy", "-O", "elf32-i386", str(elf), str(mb)], check=True)
    return elf, mb


def _run_qemu(tmp_path, mb):
    qemu = require_qemu()
    log = tmp_path / "qemu.log"
    subprocess.run([qemu, "-accel", "tcg", "-kernel", str(mb), "-d", "int,cpu_reset",
                    "-D", str(log), "-no-reboot", "-display", "none", "-monitor", "none",
                    "-serial", f"file:{tmp_path / 'serial.txt'}",
                    "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-m", "64"],
                   check=False, timeout=120)
    return log


def test_fresh_starvation_run_gives_the_reset_chain(tmp_path):
    elf, mb = _build(tmp_path, 0)
    log = _run_qemu(tmp_path, mb)
    cap = capture_mod.load([str(log)], vmlinux=str(elf))
    result = analyse_chains(merged_events(cap), cap)
    assert [[e["name"] for e in c] for c in result.chains] == [["#PF", "#DF", "#PF"]]
    pf = result.chains[0][0]
    assert (pf["cpl"], pf["rsp"], pf["cr2"], pf["symbol"]) == (0, "0x40001000", "0x40000ff8",
                                                               "starve")
    assert {i.kind for i in result.incidents} == {"triple_fault", "double_fault",
                                                  "stack_starvation"}


def test_fresh_df_ist_run_survives(tmp_path):
    elf, mb = _build(tmp_path, 1)
    log = _run_qemu(tmp_path, mb)
    assert "#DF handled on IST1" in (tmp_path / "serial.txt").read_text(errors="replace")
    cap = capture_mod.load([str(log)], vmlinux=str(elf))
    result = analyse_chains(merged_events(cap), cap)
    kinds = {i.kind: i.severity for i in result.incidents}
    assert "triple_fault" not in kinds and kinds["double_fault"] == "error"
