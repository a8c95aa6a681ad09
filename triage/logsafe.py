"""Diagnostics without patient data: logging set-up for the CLI and the services.

pydicom and highdicom warn with the offending header value quoted in the message — for example
highdicom's person-name check prints ``The string "DOE" is unlikely to represent the intended person
name``. Such text must never reach a terminal, a journal or a log file in a hospital. Therefore:

* Python warnings are routed into logging (``logging.captureWarnings``), so nothing is printed by the
  warnings machinery itself;
* every record from a third-party logger (``py.warnings``, ``pydicom``, ``highdicom``, ...) has its
  text replaced by the warning category and the code location; the original text is dropped, never
  stored;
* our own loggers (``triage.*``, ``serving.*``, ...) never format header values other than UIDs,
  codes and numbers (a code-review rule; see docs).

:func:`configure` is called once by the ``triage`` command (all subcommands); services may pass their
own handler (e.g. a JSON-lines formatter) and get the same filter.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

OWN_PREFIXES = ("triage", "training", "export", "serving", "tests", "__main__")
WITHHELD = "text withheld: third-party messages may quote DICOM header values"


class WithholdThirdPartyText(logging.Filter):
    """Replace the message of records from loggers outside this project by a PHI-free summary, and drop
    those below ``min_level`` (pydicom resets its logger's level when imported, so a logger level
    alone cannot hold them back)."""

    def __init__(self, min_level: int = logging.WARNING) -> None:
        super().__init__()
        self.min_level = min_level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".")[0] in OWN_PREFIXES:
            return True
        if record.levelno < self.min_level:
            return False
        where = record.name
        if record.name == "py.warnings":
            # captureWarnings formats "path:line: Category: text\n  source line"; keep path, line, category
            head = str(record.msg).split(": ", 2)
            where = ": ".join(head[:2]) if len(head) >= 2 else "warnings"
        record.msg = f"{where} ({WITHHELD})"
        record.args = None
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        return True


def install_filter(handlers: Iterable[logging.Handler], min_level: int = logging.WARNING) -> None:
    """Attach the filter to ``handlers`` (a filter on a handler sees records from every logger)."""
    for handler in handlers:
        for old in [f for f in handler.filters if isinstance(f, WithholdThirdPartyText)]:
            handler.removeFilter(old)
        handler.addFilter(WithholdThirdPartyText(min_level))


def configure(level: int = logging.WARNING, handler: logging.Handler | None = None,
              third_party_level: int = logging.ERROR) -> logging.Handler:
    """Route warnings into logging and log through ``handler`` (default: stderr) with the filter.

    ``level`` applies to the project's loggers; third-party loggers are set to ``third_party_level``
    (their messages are withheld anyway, and every unusable input is already an error record).
    """
    logging.captureWarnings(True)
    root = logging.getLogger()
    if handler is None:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    for old in [h for h in root.handlers if getattr(h, "_triage_handler", False)]:
        root.removeHandler(old)
    handler._triage_handler = True  # type: ignore[attr-defined]
    install_filter([handler], third_party_level)
    root.addHandler(handler)
    root.setLevel(min(level, third_party_level))
    for name in OWN_PREFIXES:
        logging.getLogger(name).setLevel(level)
    return handler
