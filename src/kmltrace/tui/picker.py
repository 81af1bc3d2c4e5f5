"""With no TARGET: pick a bundle or a trace file of the current directory."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option

from kmltrace.tui.base import KmlScreen, literal
from kmltrace.tui.session import is_parquet


def candidates(directory: Path) -> list[tuple[Path, str]]:
    """Bundles, event tables and files of a supported format in `directory`, with what
    each one is; unreadable and unknown files are left out."""
    from kmltrace.bundle import is_bundle
    from kmltrace.errors import KmltraceError
    from kmltrace.formats.sniff import detect

    found = []
    try:
        children = sorted(directory.iterdir())
    except OSError:
        return []
    for child in children:
        if child.name.startswith("."):
            continue
        if child.is_dir():
            if is_bundle(child):
                found.append((child, "bundle"))
            continue
        if is_parquet(child):
            found.append((child, "event table"))
            continue
        try:
            found.append((child, detect(child).NAME))
        except (KmltraceError, OSError):
            continue
    return found


class PickerScreen(KmlScreen):
    BINDINGS = [Binding("escape", "app.pop_screen", "Cancel", id="picker.cancel")]

    def __init__(self, directory: Path | None = None) -> None:
        super().__init__()
        self.directory = directory or Path.cwd()

    def body(self) -> ComposeResult:
        yield Label(Text(f"Open a capture in {self.directory} (Enter)"), id="picker-title")
        yield OptionList(id="picker")

    def on_mount(self) -> None:
        self._found = candidates(self.directory)
        options = self.query_one(OptionList)
        for path, what in self._found:
            label = literal(path.name, style="bold")
            label.append(f"  {what}", style="dim")
            options.add_option(Option(label))
        if not self._found:
            self.query_one("#picker-title", Label).update(Text(
                f"no bundle or trace in {self.directory}: run kmltrace tui TARGET"))
        if self._found:
            options.highlighted = 0
        options.focus()
        super().on_mount()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        path, _ = self._found[event.option_index]
        self.app.open_targets([str(path)])
