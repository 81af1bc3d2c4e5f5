"""What every screen shares: the loading bar, the status line, the footer, literal text."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Footer, Header, Label, ProgressBar

from kmltrace.output import safe_text


def literal(value, style: str = "") -> Text:
    """A kernel or trace string as Text: shown as it is, never parsed as markup."""
    return Text(safe_text(value), style=style)


class StatusRow(Horizontal):
    """The loading progress bar while the worker runs, then the inputs and their errors."""

    DEFAULT_CSS = """
    StatusRow { height: 1; }
    StatusRow ProgressBar { width: 40; }
    StatusRow Label { width: 1fr; }
    """

    def compose(self) -> ComposeResult:
        yield ProgressBar(total=100, show_eta=False, id="progress")
        yield Label("", id="status")

    def show(self, stage: str, fraction: float, message) -> None:
        bar = self.query_one(ProgressBar)
        bar.update(progress=int(fraction * 100))
        bar.display = fraction < 1.0
        self.query_one("#status", Label).update(message)


class KmlScreen(Screen):
    """A screen of the kmltrace app; subclasses compose `body` and redraw in `show_data`."""

    _shown_version = -1

    def compose(self) -> ComposeResult:
        yield Header()
        yield StatusRow()
        yield from self.body()
        yield Footer()

    def body(self) -> ComposeResult:
        yield from ()

    def on_mount(self) -> None:
        self.sync()

    def on_screen_resume(self) -> None:
        self.sync()

    def sync(self) -> None:
        """Redraw from the app's data if it changed since this screen last drew it."""
        app = self.app
        status = self.query(StatusRow)
        if status:
            status.first().show(app.stage, app.fraction, app.status_text())
        if self._shown_version != app.data_version:
            self._shown_version = app.data_version
            try:
                self.show_data(app.loaded)
            except Exception as e:  # a drawing bug must not take the session down
                app.report_error(f"{type(self).__name__}: {type(e).__name__}: {e}")

    def show_data(self, loaded) -> None:
        pass
