"""kmltrace audit on real programs: our own (sites known from their source), 32-bit and
static builds, programs of this machine (counts from objdump -d), and hostile files."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings, strategies as st

from kmltrace.analysis.audit import audit_elf, audit_paths
from kmltrace.errors import KmltraceError
from kmltrace.verbs.audit import audit as audit_verb
from tests.conftest import SAMPLES, require_binary

PROGRAMS = Path(__file__).parent / "audit_programs"
# from gs_sites.c's own comment: the sites written in the source
GS_SITES = Counter({"wrgsbase": 2, "mov to %gs": 1, "swapgs": 1,
                    "arch_prctl(ARCH_SET_GS) by syscall": 1, "arch_prctl(ARCH_SET_GS) call": 1,
                    "syscall(SYS_arch_prctl, ARCH_SET_GS) call": 1})
GS_FUNCTIONS = {"wrgsbase": "set_gs_by_wrgsbase", "mov to %gs": "set_gs_selector",
                "swapgs": "swap_gs", "arch_prctl(ARCH_SET_GS) by syscall": "raw_arch_prctl",
                "arch_prctl(ARCH_SET_GS) call": "main",
                "syscall(SYS_arch_prctl, ARCH_SET_GS) call": "main"}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def build(tmp: Path, source: str, *flags: str) -> Path:
    gcc = require_binary("gcc")
    out = tmp / (Path(source).stem + "".join(f.replace("-", "_") for f in flags))
    subprocess.run([gcc, "-O2", *flags, "-o", str(out), str(PROGRAMS / source)], check=True,
                   capture_output=True)
    return out


@pytest.fixture(scope="module")
def programs(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("audit")
    return {"dynamic": build(tmp, "gs_sites.c"), "static": build(tmp, "gs_sites.c", "-static"),
            "m32": build(tmp, "hello32.c", "-m32"),
            "m32static": build(tmp, "hello32.c", "-m32", "-static")}


def objdump_counts(path: Path) -> Counter:
    """Kernel-entry and GS-writing instructions as objdump -d prints them."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(path)], capture_output=True,
                         text=True, check=True).stdout
    counts: Counter = Counter()
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) < 2 or not re.match(r"^\s*[0-9a-f]+:$", parts[0]):
            continue
        insn = parts[1].strip()
        mnem = insn.split()[0] if insn else ""
        if mnem in ("syscall", "sysenter", "wrgsbase", "swapgs"):
            counts[mnem] += 1
        elif re.match(r"int\s+\$0x80$", insn):
            counts["int80"] += 1
        elif mnem.startswith("mov") and insn.endswith(",%gs"):
            counts["mov to %gs"] += 1
    return counts


def test_own_program_sites_match_the_source(programs):
    info = audit_elf(programs["dynamic"])
    assert (info["class"], info["machine"], info["static"]) == ("ELF64", "EM_X86_64", False)
    assert info["interpreter"] == "/lib64/ld-linux-x86-64.so.2"
    assert info["needed"] == ["libc.so.6"] and info["libc"] == "libc.so.6"
    assert Counter(s["kind"] for s in info["gs_writes"]) == GS_SITES
    for site in info["gs_writes"]:
        assert site["symbol"].split("+")[0] == GS_FUNCTIONS[site["kind"]]
        assert site["address"].startswith("0x")
    assert info["kernel_entries"] == {"syscall": 2, "sysenter": 1, "int80": 1}
    calls = sorted(s["instruction"].split(" <")[1] for s in info["gs_writes"]
                   if s["instruction"].startswith("call"))
    assert calls == ["arch_prctl@plt>", "syscall@plt>"]          # as objdump names them
    assert not any(s.get("outside_functions") for s in info["gs_writes"])


def test_static_program_same_sites_and_objdump_counts(programs):
    require_binary("objdump")
    info = audit_elf(programs["static"])
    assert info["static"] and info["interpreter"] is None and info["needed"] == []
    assert info["libc"] == "glibc (static)"
    # glibc's own code sets FS (0x1002), never GS: the GS sites are exactly the source's
    assert Counter(s["kind"] for s in info["gs_writes"]) == GS_SITES
    expected = objdump_counts(programs["static"])
    assert info["kernel_entries"] == {"syscall": expected["syscall"],
                                      "sysenter": expected["sysenter"], "int80": expected["int80"]}
    assert expected["syscall"] > 2     # libc's own syscalls are linked in


def test_32_bit_programs_are_elf32_in_trusted(programs):
    require_binary("objdump")
    result = audit_paths([programs["m32"], programs["m32static"]])
    assert [b["class"] for b in result.binaries] == ["ELF32", "ELF32"]
    assert [b["machine"] for b in result.binaries] == ["EM_386", "EM_386"]
    kinds = Counter(i.kind for i in result.incidents)
    assert kinds["elf32_in_trusted"] == 2
    assert all(i.severity == "error" for i in result.incidents if i.kind == "elf32_in_trusted")
    static = result.binaries[1]
    expected = objdump_counts(programs["m32static"])
    assert static["kernel_entries"]["int80"] == expected["int80"] > 0
    assert len([s for s in static["gs_writes"] if s["kind"] == "mov to %gs"]) == expected["mov to %gs"]


def test_programs_of_this_machine_match_objdump():
    require_binary("objdump")
    names = ["ls", "true", "cat", "busybox", "dash"]
    paths = [Path(p) for p in (shutil.which(n) for n in names) if p]
    assert len(paths) >= 3
    result = audit_paths(paths)
    assert not result.errors
    for info in result.binaries:
        expected = objdump_counts(Path(info["path"]))
        assert info["kernel_entries"] == {"syscall": expected["syscall"],
                                          "sysenter": expected["sysenter"],
                                          "int80": expected["int80"]}, info["path"]
        raw = [s for s in info["gs_writes"] if s["kind"] in ("wrgsbase", "swapgs", "mov to %gs")]
        assert len(raw) == expected["wrgsbase"] + expected["swapgs"] + expected["mov to %gs"]


def test_workload_program_of_the_samples(tmp_path):
    """kmlwork.c makes exactly one syscall(SYS_arch_prctl, ARCH_SET_GS, 0) call."""
    exe = tmp_path / "kmlwork"
    subprocess.run([require_binary("gcc"), "-O2", "-g", "-o", str(exe),
                    str(SAMPLES / "workload" / "kmlwork.c")], check=True)
    info = audit_elf(exe)
    assert [(s["kind"], s["symbol"].split("+")[0]) for s in info["gs_writes"]] == [
        ("syscall(SYS_arch_prctl, ARCH_SET_GS) call", "main")]


def test_walk_skips_non_elves_and_survives_hostile_files(tmp_path, programs):
    tree = tmp_path / "trusted"
    (tree / "sub").mkdir(parents=True)
    shutil.copy(programs["dynamic"], tree / "good")
    (tree / "README").write_text("not a program\n")
    (tree / "\x1b[31mred").write_text("#!/bin/sh\n")
    data = programs["dynamic"].read_bytes()
    (tree / "truncated").write_bytes(data[:100])
    bad_off = bytearray(data)
    bad_off[0x28:0x30] = (len(data) * 4).to_bytes(8, "little")        # e_shoff past the end
    (tree / "bad_sections").write_bytes(bytes(bad_off))
    huge = bytearray(data)
    huge[0x3C:0x3E] = (0xFFFF).to_bytes(2, "little")                   # e_shnum: 65535
    (tree / "sub" / "huge_count").write_bytes(bytes(huge))
    os.symlink("..", tree / "sub" / "loop")                            # a loop back to trusted
    os.symlink("self", tree / "self")                                  # ELOOP on its own
    result = audit_paths([tree])
    assert [Path(b["path"]).name for b in result.binaries] == ["good"]
    skipped = {Path(s["path"]).name: s["reason"] for s in result.skipped}
    assert skipped["README"] == "not an ELF" and skipped["\x1b[31mred"] == "not an ELF"
    failed = sorted(Path(e.path).name for e in result.errors)
    assert failed == ["bad_sections", "huge_count", "self", "truncated"]
    assert [Path(w.path).name for w in result.warnings] == ["loop"]
    assert "symlink loop" in str(result.warnings[0])
    assert all("\n" not in str(e) for e in result.errors + result.warnings)


def test_verb_json_and_exit_status(tmp_path, programs):
    runner = CliRunner()
    ok = runner.invoke(audit_verb, [str(programs["dynamic"]), str(programs["m32"]), "--json"])
    assert ok.exit_code == 0, ok.output
    doc = json.loads(ok.stdout)
    assert set(doc) >= {"binaries", "incidents"}
    assert {i["kind"] for i in doc["incidents"]} == {"gs_write", "elf32_in_trusted", "syscall_sites"}
    gs = next(i for i in doc["incidents"] if i["kind"] == "gs_write")
    assert gs["severity"] == "warning" and len(gs["evidence"]) == sum(GS_SITES.values())
    assert all(e["address"].startswith("0x") for e in gs["evidence"])
    looped = tmp_path / "looped"
    looped.mkdir()
    shutil.copy(programs["dynamic"], looped / "prog")
    os.symlink(".", looped / "X11")                  # as Debian's /usr/bin/X11 -> .
    loop = runner.invoke(audit_verb, [str(looped)])
    assert loop.exit_code == 0 and "X11: symlink loop" in loop.stderr
    missing = runner.invoke(audit_verb, [str(tmp_path / "nope"), str(programs["dynamic"])])
    assert missing.exit_code == 1
    assert "nope: cannot read" in missing.stderr and "ELF programs" in missing.stdout
    hostile = tmp_path / "\x1b[2Jevil"
    hostile.write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 9)
    bad = runner.invoke(audit_verb, [str(hostile)])
    assert bad.exit_code == 1 and "\x1b" not in bad.stderr and "\\x1b[2Jevil" in bad.stderr


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=10))
def test_fuzzed_programs_give_a_result_or_one_error_line(tmp_path, programs, edits):
    data = bytearray(programs["dynamic"].read_bytes())
    for pos, value in edits:
        data[pos % len(data)] = value
    path = tmp_path / "fuzzed"
    path.write_bytes(bytes(data))
    try:
        info = audit_elf(path)
    except KmltraceError as e:
        assert "\n" not in str(e) and str(path) in str(e)
    else:
        assert info["class"] in ("ELF32", "ELF64")


def test_chunked_sweep_equals_one_capstone_pass():
    """Bounded memory without changing the result: the chunked sweep decodes exactly what one
    capstone call over the whole buffer decodes (random bytes resync at odd places)."""
    import numpy as np
    from kmltrace.analysis.audit import SWEEP_CHUNK, _disassembler, sweep
    md = _disassembler(64)
    for seed in range(3):
        data = np.random.default_rng(seed).integers(0, 256, 3 * SWEEP_CHUNK + 77, dtype=np.uint8).tobytes()
        assert list(sweep(md, data, 0x401000)) == list(md.disasm_lite(data, 0x401000))


def test_data_objects_in_text_are_not_sites(tmp_path):
    require_binary("objdump")
    exe = build(tmp_path, "data_in_text.c")
    dumped = objdump_counts(exe)     # objdump -d also shows an object's bytes as data
    assert (dumped["wrgsbase"], dumped["syscall"], dumped["swapgs"]) == (0, 0, 0)
    info = audit_elf(exe)
    assert info["gs_writes"] == [] and info["kernel_entries"]["syscall"] == 0
    assert info["sites_in_data_objects"] == 3
