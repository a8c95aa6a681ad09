"""The one error type of the export step: a one-line message naming the model, the file or the figure."""

from __future__ import annotations


class ExportError(Exception):
    """Export cannot go on; ``str(exc)`` is a complete one-line message for the user."""
