"""Shared output helpers: JSON on stdout, one-line errors on stderr, safe kernel strings."""

from __future__ import annotations

import json
import sys

import click

from kmltrace.errors import KmltraceError

_CONTROL = {c: f"\\x{c:02x}" for c in range(32) if c not in (9,)} | {127: "\\x7f"}


def hexstr(value) -> str | None:
    """A 64-bit value as CONTRACT.md wants it in JSON: ``"0xffffffff81a00000"`` (None stays)."""
    if value is None:
        return None
    return f"{int(value) & 0xFFFFFFFFFFFFFFFF:#x}"


def safe_text(text) -> str:
    """A kernel string (comm, path, raw field text) made safe for a terminal: control
    characters and escape sequences are shown as ``\\xNN`` instead of being interpreted."""
    if text is None:
        return ""
    return str(text).translate(_CONTROL)


def print_json(obj) -> None:
    """Print `obj` as the one JSON object on stdout."""
    sys.stdout.write(json.dumps(obj, indent=2, default=_json_default) + "\n")
    sys.stdout.flush()


def _json_default(value):
    if isinstance(value, (set, tuple)):
        return list(value)
    if hasattr(value, "to_json"):
        return value.to_json()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def print_error(error: KmltraceError | str) -> None:
    """One line on stderr: ``kmltrace: path:line: message``."""
    click.echo(f"kmltrace: {safe_text(str(error))}", err=True)


def fail(error: KmltraceError | str, code: int = 1):
    """Print one error line and exit with `code` (1: input or refusal; 2: usage)."""
    print_error(error)
    raise SystemExit(code)
