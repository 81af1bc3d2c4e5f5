"""One error family: every problem with an input or a refusal names where it happened."""

from __future__ import annotations


class KmltraceError(Exception):
    """An error kmltrace reports as one line: ``path:line: message`` (or ``path@offset``)."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None,
                 offset: int | None = None):
        super().__init__(message)
        self.message = message
        self.path = None if path is None else str(path)
        self.line = line
        self.offset = offset

    def where(self) -> str:
        if self.path is None:
            return ""
        if self.line is not None:
            return f"{self.path}:{self.line}"
        if self.offset is not None:
            return f"{self.path}@{self.offset:#x}"
        return self.path

    def __str__(self) -> str:
        where = self.where()
        return f"{where}: {self.message}" if where else self.message

    def to_json(self) -> dict:
        out = {"message": self.message}
        if self.path is not None:
            out["path"] = self.path
        if self.line is not None:
            out["line"] = self.line
        if self.offset is not None:
            out["offset"] = self.offset
        return out


class InputError(KmltraceError):
    """An input that cannot be used: unknown format, corrupt, truncated, unreadable."""


class UnknownFormatError(InputError):
    """An input whose content matches no supported format."""


class RefusedError(KmltraceError):
    """A verb refused to run: not root, tracefs missing, an event the kernel lacks..."""


class MissingEventsError(KmltraceError):
    """An analysis cannot run because the capture lacks events it needs (named in the message)."""
