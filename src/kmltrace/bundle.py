"""Capture bundles: a directory with a ``bundle.json`` manifest and the raw data it describes.

Layout (written by ``kmltrace collect`` and ``kmltrace lab run``)::

    DIR/bundle.json           manifest (format, format_version, kind, kernel, captured, files)
    DIR/ftrace/               raw trace_pipe_raw pages per CPU + header_page + format files
    DIR/processes.json        traced processes: pid, tgid, comm, exe, maps (metadata)
    DIR/kallsyms              /proc/kallsyms at capture time (metadata, for symbols)
    DIR/qemu.log, console.log, perf.txt, snapshot.json, vmcore.elf ...  other evidence
    DIR/events.parquet        cache of the event table, rebuilt when missing or stale

The raw data is authoritative; ``events.parquet`` is derived from it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import polars as pl

from kmltrace.errors import InputError, KmltraceError
from kmltrace.formats import Parsed

MANIFEST = "bundle.json"
FORMAT_NAME = "kmltrace-bundle"
FORMAT_VERSION = 1
CACHE_TABLE = "events.parquet"
CACHE_STAMP = "events.cache.json"
#: files that describe the capture rather than hold events
META_FILES = {MANIFEST, CACHE_TABLE, CACHE_STAMP, "processes.json", "kallsyms", "README.md",
              "PROVENANCE.md"}


def is_bundle(path: Path) -> bool:
    return path.is_dir() and (path / MANIFEST).is_file()


def read_manifest(path: Path) -> dict:
    """The manifest of the bundle at `path` (a directory), checked for format and version."""
    if not path.is_dir():
        raise InputError("not a directory", path=str(path))
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise InputError("a directory TARGET must be a kmltrace bundle, and this one has no "
                         "bundle.json", path=str(path))
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        line = getattr(e, "lineno", None)
        raise InputError(f"bundle manifest does not parse: {e}", path=str(manifest_path),
                         line=line) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise InputError(f"not a kmltrace bundle manifest (format is not {FORMAT_NAME!r})",
                         path=str(manifest_path))
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise InputError(f"bundle format version {version!r} is not supported (this kmltrace "
                         f"reads up to {FORMAT_VERSION})", path=str(manifest_path))
    return manifest


def write_manifest(path: Path, manifest: dict) -> None:
    """Write `manifest` (adding format and version) into the bundle directory `path`."""
    full = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **manifest}
    tmp = path / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path / MANIFEST)


def data_entries(path: Path, manifest: dict) -> list[dict]:
    """The bundle's event sources: ``[{"path": rel, "format": name?}]``.

    Taken from the manifest's ``files`` list when it has one (entries with ``"role": "meta"``
    are metadata, not events); otherwise every top-level file that is not metadata, plus the
    ``ftrace/`` raw-page directory.
    """
    files = manifest.get("files")
    if isinstance(files, list):
        return [f for f in files if isinstance(f, dict) and f.get("role", "data") == "data"
                and isinstance(f.get("path"), str)]
    entries = []
    for child in sorted(path.iterdir()):
        if child.name in META_FILES or child.name.startswith("."):
            continue
        if child.is_dir():
            if child.name == "ftrace":
                entries.append({"path": "ftrace", "format": "ftrace_raw"})
            continue
        entries.append({"path": child.name})
    return entries


def _stamp(path: Path, entries: list[dict]) -> list:
    stamp = []
    for entry in entries:
        target = path / entry["path"]
        files = sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
        for f in files:
            try:
                st = f.stat()
            except OSError:
                continue
            stamp.append([str(f.relative_to(path)), st.st_size, st.st_mtime_ns])
    return stamp


def _parse_entry(path: Path, entry: dict) -> Parsed:
    from kmltrace.formats.sniff import parse_file

    target = path / entry["path"]
    fmt = entry.get("format")
    if fmt == "ftrace_raw":
        try:
            from kmltrace.formats import ftrace_raw
            return ftrace_raw.parse_dir(target)
        except KmltraceError as e:
            return Parsed(path=str(target), format="ftrace_raw", errors=[e])
        except ImportError:
            return Parsed(path=str(target), format="ftrace_raw",
                          errors=[InputError("raw ring-buffer pages are not readable by this "
                                             "kmltrace build", path=str(target))])
    if not target.exists():
        return Parsed(path=str(target), format=fmt or "unknown",
                      errors=[InputError("listed in bundle.json but missing", path=str(target))])
    return parse_file(target)


def load_bundle(path: Path) -> tuple[dict, list[Parsed]]:
    """Read the bundle at `path`: its manifest and one Parsed per event source.

    The event table is cached in ``events.parquet``; the cache is used only when every raw
    file it was built from still has the same size and mtime.
    """
    manifest = read_manifest(path)
    entries = data_entries(path, manifest)
    stamp = _stamp(path, entries)
    cached = _read_cache(path, stamp)
    if cached is not None:
        return manifest, cached
    parsed = [_parse_entry(path, entry) for entry in entries]
    _write_cache(path, stamp, parsed)
    return manifest, parsed


def _read_cache(path: Path, stamp: list) -> list[Parsed] | None:
    try:
        info = json.loads((path / CACHE_STAMP).read_text())
        if info.get("stamp") != stamp or info.get("kmltrace") != _version():
            return None
        table = pl.read_parquet(path / CACHE_TABLE)
    except Exception:  # any unreadable cache is simply rebuilt
        return None
    out = []
    for i, item in enumerate(info["inputs"]):
        events = table.filter(pl.col("_input") == i).drop("_input")
        out.append(Parsed(path=str(path / item["rel"]), format=item["format"], events=events,
                          errors=[KmltraceError(**e) for e in item["errors"]], meta=item["meta"]))
    return out


def _write_cache(path: Path, stamp: list, parsed: list[Parsed]) -> None:
    if not os.access(path, os.W_OK):
        return  # a read-only bundle is analysed every time, which is correct, only slower
    try:
        frames = [p.events.with_columns(pl.lit(i, dtype=pl.Int32).alias("_input"))
                  for i, p in enumerate(parsed)]
        table = pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()
        info = {"kmltrace": _version(), "stamp": stamp, "inputs": [
            {"rel": os.path.relpath(p.path, path), "format": p.format,
             "errors": [e.to_json() for e in p.errors], "meta": p.meta} for p in parsed]}
        text = json.dumps(info)
        tmp = path / (CACHE_TABLE + ".tmp")
        table.write_parquet(tmp)
        os.replace(tmp, path / CACHE_TABLE)
        (path / CACHE_STAMP).write_text(text)
    except (OSError, TypeError, ValueError):
        return  # meta that is not JSON, or a full disk: no cache this time


def _version() -> str:
    """The version plus a stamp of the installed code: a parser fixed in place (an editable
    install, a source checkout) must not be hidden behind a cache built by the old one."""
    global _CODE_STAMP
    if _CODE_STAMP is None:
        from kmltrace import __version__

        package = Path(__file__).parent
        digest = hashlib.sha1()
        for source in sorted(package.rglob("*.py")):
            st = source.stat()
            digest.update(f"{source.relative_to(package)}:{st.st_size}:{st.st_mtime_ns};".encode())
        _CODE_STAMP = f"{__version__}+{digest.hexdigest()[:16]}"
    return _CODE_STAMP


_CODE_STAMP: str | None = None


def read_processes(path: Path) -> list[dict]:
    """The bundle's ``processes.json`` (traced processes with exe and maps), or []."""
    try:
        data = json.loads((path / "processes.json").read_text())
    except (OSError, ValueError):
        return []
    return data if isinstance(data, list) else []
