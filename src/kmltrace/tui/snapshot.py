"""A drgn snapshot: IDT gates with their IST, per-CPU TSS stacks, tasks with saved registers."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Label, TabbedContent, TabPane

from kmltrace.tui.base import KmlScreen, literal
from kmltrace.tui.incident_model import vector_name
from kmltrace.tui.processes import MODE_STYLE

#: gates a kernel-mode process can take while running on its own stack
ORDINARY_VECTORS = set(range(0, 32)) - {2, 8, 18}


def gate_lacks_ist(gate: dict, kml: bool) -> bool:
    """On KML, a present gate with IST 0 that a kernel-mode process can take (an exception
    other than NMI/#DF/#MC, or a device interrupt) pushes its frame on the process's stack."""
    return bool(kml and gate.get("present", True) and not gate.get("ist")
                and gate.get("vector") is not None
                and (gate["vector"] in ORDINARY_VECTORS or gate["vector"] >= 32))


class SnapshotScreen(KmlScreen):
    BINDINGS = [
        Binding("i", "tab('tab-idt')", "IDT", id="snapshot.idt"),
        Binding("s", "tab('tab-tss')", "TSS", id="snapshot.tss"),
        Binding("k", "tab('tab-tasks')", "Tasks", id="snapshot.tasks"),
    ]

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        self.query_one(f"#{tab} DataTable", DataTable).focus()

    def body(self) -> ComposeResult:
        yield Label("", id="snapshot-title")
        with TabbedContent():
            with TabPane("IDT", id="tab-idt"):
                table = DataTable(id="idt", cursor_type="row", zebra_stripes=True)
                table.add_columns("vector", "name", "handler", "symbol", "ist", "dpl", "type",
                                  "present")
                yield table
            with TabPane("TSS", id="tab-tss"):
                table = DataTable(id="tss", cursor_type="row")
                table.add_columns("cpu", "rsp0", *[f"ist{i}" for i in range(1, 8)])
                yield table
            with TabPane("Tasks", id="tab-tasks"):
                table = DataTable(id="tasks", cursor_type="row", zebra_stripes=True)
                table.add_columns("pid", "tgid", "comm", "mode", "cs", "ip", "sp", "gs_base",
                                  "exe")
                yield table

    def show_data(self, loaded) -> None:
        snapshots = loaded.snapshots
        title = self.query_one("#snapshot-title", Label)
        for name in ("#idt", "#tss", "#tasks"):
            self.query_one(name, DataTable).clear()
        if not snapshots:
            title.update(Text("no snapshot among the TARGETs (kmltrace snapshot -o FILE "
                              "writes one)"))
            return
        snap = snapshots[-1]
        kernel = snap.get("kernel") or {}
        kml = bool(kernel.get("kml"))
        lacking = [g for g in snap.get("idt") or [] if gate_lacks_ist(g, kml)]
        head = Text()
        head.append("kernel ")
        head.append(literal(kernel.get("release", "?"), style="bold"))
        head.append("  KML" if kml else "  not KML", style="bold magenta" if kml else "")
        head.append(f"  {kernel.get('cpus', '?')} CPUs")
        if kml:
            head.append(f"  {len(lacking)} gates without IST",
                        style="bold red" if lacking else "green")
        title.update(head)
        idt = self.query_one("#idt", DataTable)
        for gate in snap.get("idt") or []:
            bad = gate_lacks_ist(gate, kml)
            style = "bold red" if bad else ""
            vector = gate.get("vector")
            idt.add_row(Text(str(vector), style=style),
                        Text(vector_name(vector) if vector is not None and vector < 32 else "",
                             style=style),
                        Text(str(gate.get("handler", ""))),
                        literal(gate.get("symbol") or ""),
                        Text(str(gate.get("ist", 0)), style=style or "green"),
                        Text(str(gate.get("dpl", ""))),
                        Text(str(gate.get("type", ""))),
                        Text("yes" if gate.get("present", True) else "no"))
        tss = self.query_one("#tss", DataTable)
        for cpu in snap.get("cpus") or []:
            t = cpu.get("tss") or {}
            ists = list(t.get("ist") or [])[:7]
            ists += [""] * (7 - len(ists))
            tss.add_row(Text(str(cpu.get("cpu", ""))), Text(str(t.get("sp0", ""))),
                        *[Text(str(v), style="red" if v in ("0x0", 0) else "") for v in ists])
        tasks = self.query_one("#tasks", DataTable)
        for task in snap.get("tasks") or []:
            mode = str(task.get("mode", "unknown"))
            tasks.add_row(Text(str(task.get("pid", ""))), Text(str(task.get("tgid", ""))),
                          literal(task.get("comm", "")),
                          Text(mode, style=MODE_STYLE.get(mode, "")),
                          *[Text(str(task.get(k) or "")) for k in ("cs", "ip", "sp", "gs_base")],
                          literal(task.get("exe") or ""))
