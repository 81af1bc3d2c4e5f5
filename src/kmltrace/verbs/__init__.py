"""One module per verb of CONTRACT.md; each defines a click command that cli.py loads lazily."""
