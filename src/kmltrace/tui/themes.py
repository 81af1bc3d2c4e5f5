"""kmltrace's dark and light themes (the stylesheet uses only their variables)."""

from __future__ import annotations

from textual.theme import Theme

DARK = Theme(
    name="kmltrace-dark",
    primary="#5fafff",
    secondary="#af87ff",
    accent="#ffaf00",
    warning="#ffd75f",
    error="#ff5f5f",
    success="#87d787",
    background="#101418",
    surface="#181e24",
    panel="#24303a",
    dark=True,
)

LIGHT = Theme(
    name="kmltrace-light",
    primary="#005f87",
    secondary="#5f00af",
    accent="#d75f00",
    warning="#af8700",
    error="#d70000",
    success="#008700",
    background="#fafafa",
    surface="#f0f0f0",
    panel="#dde4ea",
    dark=False,
)

THEMES = (DARK, LIGHT)
