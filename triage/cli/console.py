"""The one stderr console of the `triage` command: progress bars and log records share it, so that log
lines appear above a running progress bar instead of tearing it."""

from __future__ import annotations

from rich.console import Console

err_console = Console(stderr=True)
