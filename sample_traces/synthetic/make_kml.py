#!/usr/bin/env python3
"""Make a SYNTHETIC KML capture from a named REAL capture by changing only the KML facts.

A KML kernel cannot be built or run here, so the evidence a KML machine would leave is made
from a real capture of kmlwork (sample_traces/<capture>/: trace.txt, bundle/processes.json,
bundle/bundle.json, expected.json). Only these facts change, for kmlwork's parent process:

1. every exceptions:page_fault_user of that pid AFTER its exec of kmlwork gets the U/S bit
   (bit 2) of error_code cleared: a kernel-mode process takes its faults at CPL 0
   (0x6 -> 0x2, 0x14 -> 0x10, 0x4 -> 0x0, 0x7 -> 0x3, ...); faults before the exec (the
   shell it was) keep the bit;
2. its exe in processes.json moves under /trusted (where KML runs programs in kernel mode);
3. its arch_prctl(ARCH_SET_GS, 0) call (kmlwork makes exactly one, as a user process) stays
   as it is: the process making it is now kernel-mode.

Everything else (times, other processes, the fork child, the kernel manifest) is the real
capture's. Writes sample_traces/synthetic/<name>/ (bundle.json, trace.txt, processes.json,
expected.json with the counts of what was changed, PROVENANCE.md).

    python3 sample_traces/synthetic/make_kml.py host-6.18-workload kml-workload
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
SAMPLES = HERE.parent
TRUSTED = "/trusted/"
PF_USER_BIT = 0x4
LINE = re.compile(r"^\s*(?P<comm>.*?)-(?P<pid>\d+)\s+(\(\s*[\d-]+\)\s+)?\[\d+\]\s.*?"
                  r"(?P<event>[a-z_]\w*): (?P<fields>.*)$")
ERROR_CODE = re.compile(r"error_code=0x([0-9a-f]+)")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make(capture: str, name: str) -> dict:
    src = SAMPLES / capture
    expected = json.loads((src / "expected.json").read_text())
    pid = expected["pid"]
    out_dir = HERE / name
    out_dir.mkdir(parents=True, exist_ok=True)

    processes = json.loads((src / "bundle" / "processes.json").read_text())
    stack = []
    old_exe = None
    for proc in processes:
        if proc.get("pid") == pid:
            old_exe = proc.get("exe")
            proc["exe"] = TRUSTED + Path(old_exe or "kmlwork").name
            stack = [(int(m["start"], 16), int(m["end"], 16)) for m in proc.get("maps", [])
                     if m.get("path") == "[stack]"]

    lines = (src / "trace.txt").read_text().splitlines(keepends=True)
    after_exec = False
    changed, on_stack, changed_lines = 0, 0, []
    gs_lines = []
    for i, line in enumerate(lines):
        m = LINE.match(line)
        if not m or int(m["pid"]) != pid:
            continue
        event, fields = m["event"], m["fields"]
        if event == "sched_process_exec" and fields.split()[0].endswith("kmlwork"):
            after_exec = True
        elif event == "page_fault_user" and after_exec:
            code = int(ERROR_CODE.search(fields)[1], 16)
            if code & PF_USER_BIT:
                lines[i] = ERROR_CODE.sub(f"error_code={code & ~PF_USER_BIT:#x}", line, count=1)
                changed += 1
                changed_lines.append(i + 1)
                address = int(re.search(r"address=0x([0-9a-f]+)", fields)[1], 16)
                on_stack += any(lo <= address < hi for lo, hi in stack)
        elif event == "sys_enter" and after_exec and re.match(r"NR 158 \(1001,", fields):
            gs_lines.append(i + 1)

    (out_dir / "trace.txt").write_text("".join(lines))
    (out_dir / "processes.json").write_text(json.dumps(processes, indent=1) + "\n")
    manifest = json.loads((src / "bundle" / "bundle.json").read_text())
    manifest["files"] = [{"path": "trace.txt", "format": "ftrace_text", "role": "data"},
                         {"path": "processes.json", "role": "meta"}]
    manifest["synthetic"] = {"from": f"sample_traces/{capture}", "script":
                             "sample_traces/synthetic/make_kml.py"}
    (out_dir / "bundle.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    facts = {"pid": pid, "exe": TRUSTED + Path(old_exe or "kmlwork").name, "old_exe": old_exe,
             "u_bit_cleared_faults": changed, "u_bit_cleared_on_stack": on_stack,
             "arch_prctl_set_gs_lines": gs_lines, "cpus": manifest.get("captured", {}).get("cpus"),
             "implied_incidents": {
                 "kernel_mode_process": 1,
                 "gs_write": len(gs_lines),
                 "redzone_clobber": 1 if changed else 0,
                 "stack_starvation": 1 if on_stack else 0}}
    (out_dir / "expected.json").write_text(json.dumps(facts, indent=2) + "\n")
    (out_dir / "PROVENANCE.md").write_text(f"""# {name}: SYNTHETIC KML capture made from a real one

Made by `python3 sample_traces/synthetic/make_kml.py {capture} {name}` from the REAL capture
`sample_traces/{capture}` (kernel {manifest.get('kernel', {}).get('release')}, not KML; see its
PROVENANCE.md). Source files and their sha256:

- `sample_traces/{capture}/trace.txt` {_sha256(src / 'trace.txt')}
- `sample_traces/{capture}/bundle/processes.json` {_sha256(src / 'bundle' / 'processes.json')}
- `sample_traces/{capture}/bundle/bundle.json` (manifest; `files` now lists trace.txt, and a
  `synthetic` key says where it came from; the kernel entry is unchanged: kml false)

What was changed, and nothing else:

1. {changed} `page_fault_user` lines of pid {pid} after its `sched_process_exec` of kmlwork
   had bit 2 (U/S) of `error_code` cleared (what a KML kernel-mode process's faults show:
   taken at CPL 0). {on_stack} of them are at addresses inside its `[stack]` mapping. Lines:
   {changed_lines[:10]}{' ...' if len(changed_lines) > 10 else ''}
2. `processes.json`: pid {pid}'s `exe` `{old_exe}` -> `{facts['exe']}`.
3. The arch_prctl(ARCH_SET_GS) call is the workload's own (trace.txt line(s) {gs_lines}),
   unchanged: the process making it is now kernel-mode.

The fork child ({expected.get('child_pid')}) and every other process are unchanged (user mode).
Facts and the incidents they imply are in expected.json: kernel_mode_process (pid {pid}),
gs_write (error: the capture has {facts['cpus']} CPUs), redzone_clobber (CPL 0 #PF without IST
lands on the process's own stack), stack_starvation (warning, predicted: #PF on its stack
pages while the mainline #PF gate has no IST).
""")
    return facts


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("capture", help="a directory name under sample_traces/")
    parser.add_argument("name", help="output directory name under sample_traces/synthetic/")
    args = parser.parse_args()
    print(json.dumps(make(args.capture, args.name), indent=2))


if __name__ == "__main__":
    main()
