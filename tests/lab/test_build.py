"""Lab kernels build with gcc/binutils into a cache keyed by the sources' hash."""

from kmltrace.lab import build, scenarios
from tests.conftest import require_binary


def test_cache_follows_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert build.cache_dir() == tmp_path / "kmltrace" / "lab"
    path = build.kernel_path("SC_STARVATION")
    assert path.parent == tmp_path / "kmltrace" / "lab"
    assert build.source_hash()[:16] in path.name


def test_build_once_then_reuse(tmp_path, monkeypatch):
    require_binary("gcc")
    require_binary("ld")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = build.build_kernel("SC_CPL3")
    mtime = first.stat().st_mtime_ns
    assert first.read_bytes()[:4] == b"\x7fELF"
    assert build.build_kernel("SC_CPL3") == first
    assert first.stat().st_mtime_ns == mtime          # reused, not rebuilt
    symbols = scenarios.elf_symbols(first)
    # labels of kernel.S: the CPL 3 program and the multiboot entry
    assert "user_push" in symbols and "_start32" in symbols
    # the a.out-kludge header sits in the first 8 KiB, as QEMU's multiboot loader needs
    data = first.read_bytes()[:8192]
    assert (0x1BADB002).to_bytes(4, "little") in data
