"""The real ``kmltrace tui`` in a real terminal (tmux): it lists what the capture holds, and
quitting gives the terminal back (alternate screen left, the shell prompt visible again)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import SAMPLES, require_binary

#: real QEMU run (PROVENANCE.md): #PF and #DF without IST at CPL 0 on a user-range stack, so
#: neither frame can be pushed: triple fault, reset
LAB_STARVATION = SAMPLES / "lab-starvation-tcg"


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True,
                          timeout=30).stdout


def alternate_screen(session: str) -> str:
    return tmux("display-message", "-p", "-t", session, "#{alternate_on}").strip()


def wait_for(session: str, needle: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < deadline:
        screen = tmux("capture-pane", "-p", "-t", session)
        if needle in screen:
            return screen
        time.sleep(0.3)
    raise AssertionError(f"{needle!r} never appeared; the screen was:\n{screen}")


def test_kmltrace_tui_in_tmux(tmp_path):
    require_binary("tmux")
    kmltrace = Path(sys.executable).with_name("kmltrace")
    command = shlex.join([str(kmltrace) if kmltrace.exists() else sys.executable, *(
        [] if kmltrace.exists() else ["-m", "kmltrace"]), "tui", str(LAB_STARVATION)])
    session = f"kmltrace-tui-test-{os.getpid()}"
    env = {"TERM": "xterm-256color", "COLUMNS": "140", "LINES": "40"}
    # a shell first, so that after quitting we can see the terminal is usable again
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "140", "-y", "40",
                    "sh"], check=True, timeout=30,
                   env={**os.environ, **env, "PS1": "READY$ "})
    try:
        tmux("send-keys", "-t", session, f"cd {shlex.quote(str(tmp_path))} && {command}",
             "Enter")
        wait_for(session, "lab-starvation-tcg")
        screen = wait_for(session, "stack_starvation")       # the incidents screen
        for kind in ("critical  triple_fault", "critical  double_fault"):
            assert kind in screen, screen
        tmux("send-keys", "-t", session, "4")
        screen = wait_for(session, "Triple fault")           # the event view: qemu.log rows
        assert screen.count(" exception ") == 2, screen      # the #PF and the #DF
        assert alternate_screen(session) == "1"
        tmux("send-keys", "-t", session, "q")
        deadline = time.monotonic() + 30
        while alternate_screen(session) != "0" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert alternate_screen(session) == "0"  # the alternate screen was left
        time.sleep(0.5)                          # let the shell print its prompt
        tmux("send-keys", "-t", session, "stty -a | grep -o ' echo ' ; echo back-$((6*7))",
             "Enter")
        screen = wait_for(session, "back-42")
        assert "triple_fault" not in screen      # the app's screen is gone
        assert " echo " in screen                # the tty echoes again (not left raw)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], timeout=30)
