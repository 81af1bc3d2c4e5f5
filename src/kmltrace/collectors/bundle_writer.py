"""Write a capture bundle atomically: everything goes into ``DIR.partial``, which is renamed
to ``DIR`` only once the manifest is written, so a ``DIR`` that exists is always complete."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from kmltrace.errors import RefusedError


def default_output() -> Path:
    return Path(time.strftime("kmltrace-%Y%m%d-%H%M%S"))


class BundleWriter:
    def __init__(self, final: Path):
        self.final = Path(final)
        if self.final.exists():
            raise RefusedError("output already exists; choose another -o", path=str(self.final))
        self.path = self.final.with_name(self.final.name + ".partial")
        if self.path.exists():
            shutil.rmtree(self.path)  # an earlier collect that died: never renamed, never valid
        try:
            self.path.mkdir(parents=True)
        except OSError as e:
            raise RefusedError(f"cannot create the bundle directory: {e.strerror}",
                               path=str(self.path)) from None
        self.ftrace = self.path / "ftrace"
        self.ftrace.mkdir()
        self.files: list[dict] = []

    def add_file(self, rel: str, role: str = "data", fmt: str | None = None) -> None:
        entry = {"path": rel, "role": role}
        if fmt:
            entry["format"] = fmt
        self.files.append(entry)

    def write_json(self, rel: str, obj, role: str = "meta") -> None:
        (self.path / rel).write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
        self.add_file(rel, role)

    def copy_tracefs_file(self, src: Path, rel: str) -> bool:
        """Copy a tracefs file (size 0 in stat, so read it rather than shutil.copy)."""
        try:
            data = src.read_bytes()
        except OSError:
            return False
        dest = self.ftrace / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        return True

    def write_manifest(self, manifest: dict) -> None:
        from kmltrace.bundle import write_manifest  # (polars: not needed to refuse early)

        write_manifest(self.path, {**manifest, "files": self.files})

    def finish(self) -> Path:
        """Rename DIR.partial to DIR (the bundle becomes visible, complete)."""
        os.replace(self.path, self.final)
        return self.final

    def abandon(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
