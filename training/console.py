"""What every training command body shares: log set-up and the one-line error (exit status 2)."""

from __future__ import annotations

import logging
import sys

import typer


def setup_logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(levelname)s %(message)s",
        stream=sys.stderr,
    )


def error(command: str, message: str) -> int:
    """Print ``triage COMMAND: error: MESSAGE`` on stderr; returns 2 (bad usage or data)."""
    typer.echo(f"triage {command}: error: {message}", err=True)
    return 2
