"""The Textual browser of ``kmltrace tui``; the only package (with verbs/tui.py) that
imports textual, so the analysis stays usable without a terminal UI."""
