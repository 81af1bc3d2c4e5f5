"""The kmltrace Textual app: modes for incidents, processes, timeline, events and snapshot.

Loading runs in a thread in stages (inputs, merged events, analysis); each stage
bumps ``data_version`` and the screens redraw from ``loaded``, so the first screen is up at
once and the event view works before the analysis of a large capture has finished.
"""

from __future__ import annotations

from pathlib import Path

import asyncio
import gc
import importlib
import threading

from rich.text import Text
from textual.app import App, SystemCommand
from textual.binding import Binding

from kmltrace.output import safe_text
from kmltrace.tui.incidents import IncidentsScreen
from kmltrace.tui.session import Loaded
from kmltrace.tui.themes import DARK, LIGHT, THEMES

#: every screen class by name, imported when first shown: the other screens need polars, and
#: the first screen must not wait for it
SCREENS = {
    "incidents": "kmltrace.tui.incidents:IncidentsScreen",
    "incident_detail": "kmltrace.tui.incident_detail:IncidentDetailScreen",
    "processes": "kmltrace.tui.processes:ProcessesScreen",
    "timeline": "kmltrace.tui.timeline:TimelineScreen",
    "events": "kmltrace.tui.events:EventsScreen",
    "snapshot": "kmltrace.tui.snapshot:SnapshotScreen",
}


def screen_class(name: str) -> type:
    module, attr = SCREENS[name].split(":")
    return getattr(importlib.import_module(module), attr)


def screen_classes() -> dict[str, type]:
    return {name: screen_class(name) for name in SCREENS}


def _mode(name: str):
    return lambda: screen_class(name)()


class KmltraceApp(App):
    TITLE = "kmltrace"
    CSS_PATH = "app.tcss"
    MODES = {
        "incidents": IncidentsScreen,
        "processes": _mode("processes"),
        "timeline": _mode("timeline"),
        "events": _mode("events"),
        "snapshot": _mode("snapshot"),
    }
    BINDINGS = [
        Binding("1", "switch_mode('incidents')", "Incidents", id="incidents"),
        Binding("2", "switch_mode('processes')", "Processes", id="processes"),
        Binding("3", "switch_mode('timeline')", "Timeline", id="timeline"),
        Binding("4", "switch_mode('events')", "Events", id="events"),
        Binding("5", "switch_mode('snapshot')", "Snapshot", id="snapshot"),
        Binding("question_mark,f1", "help", "Help", key_display="?", id="help"),
        Binding("t", "toggle_theme", "Theme", id="theme", show=False),
        Binding("o", "open", "Open", id="open", show=False,
                tooltip="Pick another bundle or trace of the current directory"),
        Binding("q", "quit", "Quit", id="quit"),
    ]

    def __init__(self, targets: list[str] | None = None, vmlinux: str | None = None,
                 loaded: Loaded | None = None, directory: Path | None = None) -> None:
        super().__init__()
        self.targets = list(targets or [])
        self.vmlinux = vmlinux
        self.directory = directory
        self.loaded = loaded or Loaded(targets=self.targets)
        self.preloaded = loaded is not None
        self.stage = "done" if loaded is not None else "waiting"
        self.fraction = 1.0 if loaded is not None else 0.0
        self.data_version = 0
        self.pending_jump: dict | None = None
        self.loading_done = asyncio.Event()     # replaced by each load; set when it ends
        if loaded is not None or not self.targets:
            self.loading_done.set()
        for theme in THEMES:
            self.register_theme(theme)
        self.theme = DARK.name

    # -- start and load ---------------------------------------------------------------------

    async def on_mount(self) -> None:
        await self.switch_mode("incidents")
        if self.preloaded:
            self.data_changed()
        elif self.targets:
            self.load(self.targets)
        else:
            self.action_open()

    def open_targets(self, targets: list[str]) -> None:
        """Open `targets` instead of what is shown (from the file picker)."""
        from kmltrace.tui.picker import PickerScreen

        if isinstance(self.screen, PickerScreen):
            self.pop_screen()
        self.targets = list(targets)
        self.loaded = Loaded(targets=self.targets)
        self.data_changed()
        self.load(self.targets)

    def load(self, targets: list[str]) -> None:
        """Load in a daemon thread (not a Textual worker: quitting must not wait for the
        analysis of a large capture to finish)."""
        self.loading_done = asyncio.Event()
        threading.Thread(target=self._load_thread, args=(list(targets), self.loading_done),
                         name="kmltrace-load", daemon=True).start()

    def _load_thread(self, targets: list[str], done: asyncio.Event) -> None:
        def progress(stage: str, fraction: float, loaded: Loaded) -> None:
            self.call_from_thread(self.loading_progress, stage, fraction, loaded, done)

        try:
            from kmltrace.tui.model import load_all

            load_all(targets, self.vmlinux, progress)
        except Exception as e:  # reported on the screen, never raised into the terminal
            message = f"loading failed: {type(e).__name__}: {e}"
            try:
                self.call_from_thread(self.loading_failed, message, done)
            except RuntimeError:        # the app has already quit
                pass

    def loading_progress(self, stage: str, fraction: float, loaded: Loaded,
                         done: asyncio.Event | None = None) -> None:
        if done is not None and done is not self.loading_done:
            return                      # a load that another target replaced
        self.stage, self.fraction, self.loaded = stage, fraction, loaded
        if stage == "done":
            for error in loaded.errors:
                self.notify(safe_text(error), severity="error", markup=False, timeout=8)
            self.loading_done.set()
        self.data_changed()

    def loading_failed(self, message: str, done: asyncio.Event) -> None:
        self.stage, self.fraction = "failed", 1.0
        self.report_error(message)
        done.set()

    def data_changed(self) -> None:
        # what is loaded lives for the session: moved out of the collector's sight, a full
        # collection no longer walks it (one stalled a page move by 80-200 ms)
        gc.freeze()
        self.data_version += 1
        self.sync_screen()

    def sync_screen(self) -> None:
        sync = getattr(self.screen, "sync", None)
        if sync is not None:
            sync()

    def report_error(self, message: str) -> None:
        """Show an error on the screen (never raise it): it joins the status line too."""
        self.loaded.errors.append(message)
        self.notify(safe_text(message), severity="error", markup=False, timeout=8)
        self.sync_screen()

    def status_text(self) -> Text:
        names = ", ".join(Path(t).name for t in self.targets) or "no capture"
        text = Text(safe_text(names), style="bold")
        if self.fraction < 1.0:
            text.append(f"  {self.stage}...")
        events = self.loaded.events
        if events is not None:
            text.append(f"  {events.height:,} events")
        if self.loaded.errors:
            text.append(f"  {len(self.loaded.errors)} error(s): ", style="red")
            text.append(safe_text(self.loaded.errors[-1]), style="red")
        return text

    # -- navigation ---------------------------------------------------------------------------

    def jump_to_evidence(self, evidence: dict) -> None:
        """Show the event an incident's evidence row points at in the event view."""
        self.pending_jump = evidence
        if isinstance(self.screen, screen_class("events")):
            self.take_jump(self.screen)
        else:
            self.switch_mode("events")

    def take_jump(self, screen) -> None:
        evidence, self.pending_jump = self.pending_jump, None
        if evidence is not None:
            screen.jump(evidence)

    def action_help(self) -> None:
        from kmltrace.tui.help import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_toggle_theme(self) -> None:
        self.theme = LIGHT.name if self.theme == DARK.name else DARK.name

    def action_open(self) -> None:
        from kmltrace.tui.picker import PickerScreen

        if not isinstance(self.screen, PickerScreen):
            self.push_screen(PickerScreen(self.directory))

    def get_system_commands(self, screen):
        yield from super().get_system_commands(screen)
        for binding in self.BINDINGS:
            if binding.id in ("incidents", "processes", "timeline", "events", "snapshot"):
                yield SystemCommand(f"Show {binding.description.lower()}",
                                    f"Switch to the {binding.description.lower()} screen",
                                    lambda mode=binding.id: self.switch_mode(mode))
        yield SystemCommand("Toggle light/dark theme", "kmltrace-dark or kmltrace-light",
                            self.action_toggle_theme)
        yield SystemCommand("Open another capture", "Pick a bundle or trace of this directory",
                            self.action_open)
        yield SystemCommand("Bindings help", "Every key of every screen", self.action_help)
