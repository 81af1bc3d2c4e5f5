"""Who ran when, per CPU or per process, with exceptions, faults and interrupts marked."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Label, Static

from kmltrace.tui.base import KmlScreen
from kmltrace.tui.incident_model import format_ts
from kmltrace.tui.model import time_span, timeline_lanes, who_letter

LABEL_WIDTH = 10
COLOURS = ["cyan", "green", "blue", "magenta", "bright_cyan", "bright_green", "bright_blue",
           "bright_magenta"]
MARK_STYLE = {"!": "bold white on red", "f": "bold yellow", "i": "dim white"}


class TimelineScreen(KmlScreen):
    BINDINGS = [
        Binding("plus,equals_sign", "zoom(0.5)", "Zoom in", key_display="+",
                id="timeline.zoom_in"),
        Binding("minus", "zoom(2)", "Zoom out", key_display="-", id="timeline.zoom_out"),
        Binding("left,h", "pan(-1)", "Pan left", key_display="←", id="timeline.pan_left"),
        Binding("right,l", "pan(1)", "Pan right", key_display="→", id="timeline.pan_right"),
        Binding("p", "toggle_lanes", "CPU/process", id="timeline.cpu_process"),
        Binding("0", "reset_view", "Whole capture", id="timeline.whole_capture"),
    ]

    by = "cpu"
    window: tuple[int, int] | None = None

    def body(self) -> ComposeResult:
        yield Label("", id="timeline-range")
        with VerticalScroll():
            yield Static("", id="timeline")
        yield Static(self.legend(), id="timeline-legend")

    @staticmethod
    def legend() -> Text:
        text = Text("legend: letters = pid running (per CPU) / digit = CPU (per process); "
                    "under each lane: ")
        for mark, meaning in (("!", "exception"), ("f", "page fault"), ("i", "interrupt")):
            text.append(mark, style=MARK_STYLE[mark])
            text.append(f" {meaning}  ")
        text.append("-", style="dim")
        text.append(" idle")
        return text

    def show_data(self, loaded) -> None:
        self.window = None
        self.draw()

    def span(self):
        events = self.app.loaded.events
        return time_span(events) if events is not None else None

    def draw(self) -> None:
        span = self.span()
        out = self.query_one("#timeline", Static)
        if span is None:
            out.update(Text("no timed events" if self.app.loaded.events is not None
                            else "merging events..."))
            return
        if self.window is None:
            self.window = (span[0], span[1] + 1)
        t0, t1 = self.window
        width = max(10, self.size.width - LABEL_WIDTH - 4)
        lanes = timeline_lanes(self.app.loaded.events, t0, t1, width, by=self.by)
        self.query_one("#timeline-range", Label).update(Text(
            f"{'per CPU' if self.by == 'cpu' else 'per process'}  "
            f"{format_ts(t0)} .. {format_ts(t1)}  ({(t1 - t0) / 1e6:.3f} ms, "
            f"{(t1 - t0) / width / 1e3:.1f} us per column)"))
        text = Text()
        for lane in lanes:
            text.append(lane.label.ljust(LABEL_WIDTH)[:LABEL_WIDTH], style="bold")
            for cell, who in zip(lane.cells, lane.pids):
                if self.by == "cpu" and who:
                    text.append(cell, style=COLOURS[int(who) % len(COLOURS)])
                else:
                    text.append(cell, style="dim" if cell in "-·" else "")
            text.append("\n")
            if any(m != " " for m in lane.marks):      # the marks under the lane they belong to
                text.append(" " * LABEL_WIDTH)
                for mark in lane.marks:
                    text.append(mark, style=MARK_STYLE.get(mark, ""))
                text.append("\n")
        if self.by == "cpu":
            seen = sorted({p for lane in lanes for p in lane.pids if p})
            if seen:
                text.append("\npids: ")
                for pid in seen[:40]:
                    text.append(who_letter(pid), style=COLOURS[int(pid) % len(COLOURS)])
                    text.append(f"={pid} ")
        out.update(text or Text("no events in this window"))

    def on_resize(self) -> None:
        if self.app.loaded.events is not None:
            self.draw()

    def action_zoom(self, factor: float) -> None:
        if self.window is None:
            return
        t0, t1 = self.window
        middle = (t0 + t1) // 2
        half = max(500, int((t1 - t0) * factor / 2))
        self.window = (middle - half, middle + half)
        self.draw()

    def action_pan(self, direction: int) -> None:
        if self.window is None:
            return
        t0, t1 = self.window
        step = (t1 - t0) // 4 * direction
        self.window = (t0 + step, t1 + step)
        self.draw()

    def action_toggle_lanes(self) -> None:
        self.by = "pid" if self.by == "cpu" else "cpu"
        self.draw()

    def action_reset_view(self) -> None:
        self.window = None
        self.draw()
