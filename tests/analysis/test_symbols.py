"""The symbol service against the tools' own answers (nm, addr2line), the kernel's own %ps
names in a real capture, and the kallsyms snapshot of that capture."""

from __future__ import annotations

import bisect
import json
import os
import re
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings, strategies as st

from kmltrace.capture import load
from kmltrace.errors import InputError
from kmltrace.symbols import Symbolizer, SymbolTable
from kmltrace.symbols import cache
from kmltrace.symbols.readers import read_elf, read_kallsyms_text
from tests.conftest import SAMPLES, require, require_binary

WORKLOAD = SAMPLES / "host-6.18-workload"
KMLWORK_C = SAMPLES / "workload" / "kmlwork.c"
LAB_ELF = SAMPLES / "lab-cpl3-tcg" / "kernel.elf"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def kmlwork(tmp_path_factory) -> Path:
    """kmlwork rebuilt exactly as PROVENANCE.md of host-6.18-workload says."""
    gcc = require_binary("gcc")
    out = tmp_path_factory.mktemp("kmlwork") / "kmlwork"
    subprocess.run([gcc, "-O2", "-g", "-Wall", "-fno-stack-clash-protection",
                    "-fno-stack-protector", "-o", str(out), str(KMLWORK_C)], check=True)
    return out


def nm_functions(path: Path, dynamic: bool = False) -> dict[int, set[str]]:
    """address -> names of the defined text symbols, from `nm` itself."""
    out = subprocess.run(["nm", "-S", "--defined-only", *(["-D"] if dynamic else []), str(path)],
                         capture_output=True, text=True, check=True).stdout
    table: dict[int, set[str]] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in "Tt" and int(parts[1], 16) > 0:
            table.setdefault(int(parts[0], 16), set()).add(parts[3].split("@")[0])
    return table


def test_program_symbols_match_nm(kmlwork):
    require_binary("nm")
    table = read_elf(kmlwork)
    funcs = nm_functions(kmlwork)
    assert len(funcs) > 5
    for addr, names in funcs.items():
        assert table.symbolize(addr).split("+")[0] in names
        assert table.symbolize(addr).split("+")[1].startswith("0x0/")


def test_stripped_library_symbols_match_nm_dynamic():
    require_binary("nm")
    libc = Path("/usr/lib/x86_64-linux-gnu/libc.so.6")
    require(libc.exists(), "no glibc at the Debian path")
    table = read_elf(libc)
    funcs = nm_functions(libc, dynamic=True)
    assert len(funcs) > 1000
    addrs = sorted(funcs)
    got = table.lookup(np.array(addrs, dtype=np.uint64))
    for addr, name, off in zip(addrs, got["symbol"].to_list(), got["sym_offset"].to_list()):
        assert name in funcs[addr] and off == 0


def test_workload_user_addresses_match_addr2line_and_the_workload(kmlwork):
    """Page faults of the real capture at user ips inside kmlwork: our names equal addr2line's
    on the rebuilt binary, and the counts per function are the workload's own page counts."""
    addr2line = require_binary("addr2line")
    capture = load([WORKLOAD / "bundle", kmlwork])
    sym = Symbolizer.for_capture(capture)
    exp = json.loads((WORKLOAD / "expected.json").read_text())
    procs = json.loads((WORKLOAD / "bundle" / "processes.json").read_text())
    maps = [m for m in procs[0]["maps"] if m["path"].endswith("/kmlwork")]
    base = min(int(m["start"], 16) for m in maps)      # file offset 0 of a PIE
    end = max(int(m["end"], 16) for m in maps)
    faults = (capture.events().filter(pl.col("event") == "page_fault_user").collect()
              .filter((pl.col("ip") >= base) & (pl.col("ip") < end)))
    assert faults.height > 100
    names = sym.symbolize_column(faults["ip"], faults["pid"])
    ours = [t.split("+")[0] for t in names.to_list()]
    ips = sorted(set(faults["ip"].to_list()))
    out = subprocess.run([addr2line, "-f", "-e", str(kmlwork), *[f"{ip - base:#x}" for ip in ips]],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    theirs = dict(zip(ips, out[0::2]))
    # addr2line names functions from DWARF (copy_maps), the symbol table names gcc's clones
    # (copy_maps.part.0), as nm and perf do
    clone = re.compile(r"\.(part|isra|constprop|cold)(\.\d+)?$")
    assert [clone.sub("", n) for n in ours] == [theirs[ip] for ip in faults["ip"].to_list()]
    assert "copy_maps.part.0" in ours or "copy_maps" in ours
    stack_ip = faults.filter(pl.Series(ours) == "touch_stack")["ip"][0]
    assert sym.user_line(exp["pid"], stack_ip) == subprocess.run(
        [addr2line, "-e", str(kmlwork), f"{stack_ip - base:#x}"], capture_output=True, text=True,
        check=True).stdout.split()[0]
    counts = Counter(ours)
    pages = exp["ranges"]
    assert counts["touch_stack"] == pages["stack"]["pages"]
    assert counts["touch_heap"] == pages["heap"]["pages"] + pages["child_heap"]["pages"]


def _kallsyms_expected(text: str, addrs: list[int]) -> list[str]:
    """name+0xoff/0xsize the naive way: the last kallsyms line at or below each address."""
    rows = []
    for line in text.splitlines():
        a, t, name = line.split()[:3]
        if t not in "UuwvNn" and int(a, 16) >= 0xFFFF800000000000:
            rows.append((int(a, 16), name))
    starts = sorted({a for a, _ in rows})
    first = {}
    for a, name in rows:
        first.setdefault(a, name)
    out = []
    for addr in addrs:
        i = bisect.bisect_right(starts, addr) - 1
        size = starts[i + 1] - starts[i]
        out.append(f"{first[starts[i]]}+{addr - starts[i]:#x}/{size:#x}")
    return out


def test_kernel_addresses_match_the_kallsyms_snapshot_and_the_kernel():
    capture = load([WORKLOAD / "trace.dat"])
    text = capture.metas("kallsyms_text")[0]
    sym = Symbolizer.for_capture(capture)
    assert sym.kernel is not None and sym.kernel_slide == 0
    faults = capture.events().filter(pl.col("event") == "page_fault_kernel").collect()
    assert faults.height > 0      # the same run's trace.txt counts them below
    ours = sym.kernel_lookup(faults["ip"])["sym_text"].to_list()
    # running addresses: a console's KASLR offset passed by a caller must not move them
    assert sym.kernel_symbol(faults["ip"][0], slide=0x1000000) == ours[0]
    assert ours == _kallsyms_expected(text, faults["ip"].to_list())
    # the kernel printed the same events' ip with %ps in the tracefs text of this run
    printed = re.findall(r"page_fault_kernel: .* ip=(\S+)", (WORKLOAD / "trace.txt").read_text())
    assert Counter(t.split("+")[0] for t in ours) == Counter(printed)


class FakeCapture:
    """Only what Symbolizer.for_capture reads of a Capture."""

    def __init__(self, vmlinux=None, **metas):
        self.vmlinux, self.processes, self.bundles, self.inputs = vmlinux, [], [], []
        self._metas = metas

    def metas(self, key):
        return self._metas.get(key, [])


def test_kaslr_slide_from_kallsyms_and_from_the_console(tmp_path):
    """Synthetic kallsyms: the lab kernel's own symbols (nm) moved by 2 MiB, as a KASLR boot
    would move a vmlinux; the ELF is the vmlinux."""
    require_binary("nm")
    slide = 0x200000
    nm = subprocess.run(["nm", str(LAB_ELF)], capture_output=True, text=True, check=True).stdout
    rows = [l.split() for l in nm.splitlines() if len(l.split()) == 3]
    kallsyms = tmp_path / "kallsyms"
    kallsyms.write_text("".join(f"{int(a, 16) + slide:016x} {t} {n}\n" for a, t, n in rows))
    df_handler = next(int(a, 16) for a, t, n in rows if n == "df_handler")
    sym = Symbolizer.for_capture(FakeCapture(vmlinux=str(LAB_ELF), kallsyms=[str(kallsyms)]))
    assert sym.kernel_slide == slide and sym.kernel.source == str(LAB_ELF)
    assert sym.kernel_symbol(df_handler + slide + 3).startswith("df_handler+0x3/")
    assert sym.kernel_symbol(df_handler + 3) != sym.kernel_symbol(df_handler + slide + 3)
    # a console "Kernel Offset:" value is used when there is no kallsyms
    sym = Symbolizer.for_capture(FakeCapture(vmlinux=str(LAB_ELF), kaslr_offset=[slide]))
    assert sym.kernel_slide == slide
    assert sym.kernel_symbol(df_handler + slide).startswith("df_handler+0x0/")


def test_cache_second_load_and_invalidation(tmp_path, kmlwork):
    from kmltrace.symbols.service import load_table
    copy = tmp_path / "prog"
    copy.write_bytes(kmlwork.read_bytes())
    first = load_table(copy)
    stored = list(cache.cache_dir().glob("*.parquet"))
    assert len(stored) == 1 and str(cache.cache_dir()).startswith(os.environ["XDG_CACHE_HOME"])
    again = load_table(copy)
    assert again.to_frame().equals(first.to_frame()) and again.meta == first.meta
    # a kallsyms text has no build-id: an edit (new size/mtime) is parsed again
    text = tmp_path / "kallsyms"
    text.write_text("ffffffff81000000 T _text\nffffffff81000100 T foo\n")
    assert load_table(text).symbolize(0xffffffff81000010) == "_text+0x10/0x100"
    text.write_text("ffffffff81000000 T _text\nffffffff81000080 T bar\nffffffff81000100 T foo\n")
    assert load_table(text).symbolize(0xffffffff81000090) == "bar+0x10/0x80"


def test_hidden_and_garbage_kallsyms_are_one_line_errors():
    with pytest.raises(InputError, match="hidden"):
        read_kallsyms_text("0000000000000000 T _text\n0000000000000000 T foo\n", "k")
    with pytest.raises(InputError, match="not a kallsyms"):
        read_kallsyms_text("hello world\n\x1b[31mred\n", "k")


def test_module_symbols_print_like_the_kernel():
    table = read_kallsyms_text("ffffffff81000000 T _text\nffffffff81000100 T _etext\n"
                               "ffffffffc0201000 t ftrace_trampoline\t[__builtin__ftrace]\n"
                               "ffffffffc0201400 t other\t[mod]\n", "synthetic")
    assert table.symbolize(0xffffffffc0201010) == "ftrace_trampoline+0x10/0x400 [__builtin__ftrace]"
    assert table.lookup([0xffffffffc0201010, 0x1000])["sym_text"].to_list() == [
        "ftrace_trampoline+0x10/0x400 [__builtin__ftrace]", None]
    # the core kernel's last symbol does not stretch over the gap to the modules
    assert table.symbolize(0xffffffff81000100 + 0x10) == "_etext+0x10/0x1000"
    assert table.symbolize(0xffffffff81000100 + 0x100000) is None


@settings(max_examples=200, deadline=None)
@given(starts=st.lists(st.integers(0, 1 << 40), min_size=1, max_size=50, unique=True),
       queries=st.lists(st.integers(0, (1 << 40) + 100), max_size=50),
       size=st.integers(0, 300))
def test_lookup_equals_a_naive_scan(starts, queries, size):
    table = SymbolTable.build(starts, [f"s{i}" for i in range(len(starts))],
                              sizes=[size] * len(starts))
    got = table.lookup(queries)["sym_text"].to_list()
    srt = sorted(starts)
    for q, text in zip(queries, got):
        below = [s for s in srt if s <= q]
        expect = None
        if below:
            s = below[-1]
            nxt = [t for t in srt if t > s]
            eff = size or (nxt[0] - s if nxt else 0)
            if q - s < max(eff, 1):
                expect = f"s{starts.index(s)}+{q - s:#x}/{eff:#x}"
        assert text == expect


def test_dwarf_lines_match_addr2line(kmlwork):
    """file:line of every address of kmlwork's main and touch_* functions, as addr2line says."""
    from kmltrace.symbols.lines import line_of, load_lines
    addr2line = require_binary("addr2line")
    table = read_elf(kmlwork)
    addrs = []
    for name in ("main", "touch_heap", "touch_stack"):
        start = table.address_of(name)
        size = int(table.sizes[np.searchsorted(table.addrs, start)])
        addrs += list(range(start, start + size, 3))
    out = subprocess.run([addr2line, "-e", str(kmlwork), *map(hex, addrs)], capture_output=True,
                         text=True, check=True).stdout.splitlines()
    theirs = [t.split(" ")[0] for t in out]          # "file:line (discriminator N)"
    ours = line_of(load_lines(kmlwork), addrs).to_list()
    assert len(addrs) > 100
    assert ours == theirs
    assert load_lines(kmlwork).to_frame().equals(load_lines(kmlwork).to_frame())   # cached


def test_system_map_from_nm_equals_the_elf(tmp_path):
    """A System.map is `nm -n vmlinux` (scripts/mksysmap): read through --vmlinux it names the
    lab kernel's labels exactly as its ELF symbol table does."""
    require_binary("nm")
    system_map = tmp_path / "System.map"
    system_map.write_text(subprocess.run(["nm", "-n", str(LAB_ELF)], capture_output=True,
                                         text=True, check=True).stdout)
    sym = Symbolizer.for_capture(FakeCapture(vmlinux=str(system_map)))
    elf = read_elf(LAB_ELF)
    assert sym.kernel is not None and sym.kernel.meta["kind"] == "kallsyms"
    names = {"df_handler", "bp_handler", "_start32"}
    for name in names:
        addr = elf.address_of(name)
        assert sym.kernel_symbol(addr + 1).split("+")[0] == name
        assert sym.kernel.address_of(name) == addr


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(
    st.text(max_size=40),
    st.builds(lambda a, t, n: f"{a:016x} {t} {n}", st.integers(0, (1 << 64) - 1),
              st.sampled_from("TtDdRrWwUuAaBb"), st.text(min_size=1, max_size=12).filter(
                  lambda s: not any(c.isspace() for c in s)))), max_size=30))
def test_fuzzed_kallsyms_text_gives_a_table_or_one_error(lines):
    try:
        table = read_kallsyms_text("\n".join(lines), "fuzz")
    except InputError as e:
        assert "\n" not in str(e)
    else:
        addrs = table.addrs.tolist()
        assert all(a < b for a, b in zip(addrs, addrs[1:]))
        assert table.lookup(table.addrs)["sym_offset"].to_list() == [0] * len(addrs)


def test_kernel_line_from_an_elf_with_dwarf(kmlwork):
    """kernel_line reads the kernel ELF's DWARF (a program stands in for a debug vmlinux);
    the lab kernel has no DWARF: None, not an error."""
    addr2line = require_binary("addr2line")
    sym = Symbolizer.for_capture(FakeCapture(vmlinux=str(kmlwork)))
    addr = read_elf(kmlwork).address_of("touch_stack") + 4
    expected = subprocess.run([addr2line, "-e", str(kmlwork), hex(addr)], capture_output=True,
                              text=True, check=True).stdout.split()[0]
    assert sym.kernel_line(addr) == expected
    assert Symbolizer.for_capture(FakeCapture(vmlinux=str(LAB_ELF))).kernel_line(0x100402) is None
