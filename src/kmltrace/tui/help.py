"""The help screen: every binding of the app and of each screen, from their definitions."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

INTRO = ("kmltrace tui: start at the incidents (1), open one with Enter, jump from its evidence "
         "to the event (Enter or j), browse processes (2), the timeline (3), every event (4) "
         "and a drgn snapshot (5). Ctrl+P opens the command palette; the mouse works too.")


def bindings_table(title: str, bindings) -> Table:
    table = Table(title=title, title_justify="left", show_header=False, box=None,
                  padding=(0, 2))
    for binding in bindings:
        if isinstance(binding, tuple):
            binding = Binding(*binding)
        keys = binding.key_display or binding.key
        table.add_row(Text(keys, style="bold"), Text(binding.description or binding.action),
                      Text(binding.id or "", style="italic"),
                      Text(binding.tooltip or "", style="dim"))
    return table


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape,q,question_mark", "app.pop_screen", "Close", id="help.close")]

    def compose(self) -> ComposeResult:
        from kmltrace.tui.app import KmltraceApp, screen_classes

        with VerticalScroll(id="help"):
            yield Static(Text(INTRO), id="help-intro")
            yield Static(bindings_table("Everywhere", KmltraceApp.BINDINGS))
            for name, cls in screen_classes().items():
                own = cls.__dict__.get("BINDINGS")     # not the ones inherited from Screen
                if own:
                    yield Static(bindings_table(name.replace("_", " ").capitalize(), own))
