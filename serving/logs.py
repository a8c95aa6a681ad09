"""JSON-lines logging for the services: one object per line on stderr (journald, docker logs) and
optionally in a file (reopened when logrotate moves it).

Each line: ``{"ts": "2024-05-01T08:30:00.123Z", "level": "INFO", "logger": "serving.worker",
"msg": "study done", ...fields}``; fields are the ``extra={...}`` of the call (``event``, ``study_uid``,
``job``, ``code``, ...). No patient attribute (name, ID, birth date, ...) is ever passed to a log call;
Python warnings, whose text may quote a DICOM value, are logged by category and origin only, and
pynetdicom's own logger (which dumps data sets at debug level) is held at WARNING; pydicom and highdicom
messages are logged by origin only.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import time
import warnings
from pathlib import Path
from typing import Any, TextIO

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
LEVELS = ("debug", "info", "warning", "error")


class JsonFormatter(logging.Formatter):
    """A LogRecord as one JSON object (UTC timestamp, level, logger, message, extra fields, exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, str | int | float | bool | type(None)) else str(value)
        if record.exc_info and record.exc_info[0] is not None:
            entry["exc_type"] = record.exc_info[0].__name__
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


_DICOM_LIBRARIES = frozenset({"pydicom", "highdicom"})


class _Withheld(logging.Filter):
    """Replaces the text of DICOM libraries' log messages, which may quote element values, with where
    they came from (a handler filter: it sees the records of child loggers too)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".")[0] in _DICOM_LIBRARIES:
            record.msg = "message withheld (may quote DICOM values) from %s:%d"
            record.args = (record.module, record.lineno)
        return True


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """warnings.showwarning replacement: log the category and where, never the text (it may quote a
    patient attribute, e.g. pydicom's "invalid value for VR PN")."""
    origin = Path(filename).parent.name + "/" + Path(filename).name
    logging.getLogger("py.warnings").warning(
        "%s at %s:%d", category.__name__, origin, lineno, extra={"event": "python_warning"}
    )


def setup_logging(level: str = "info", log_file: Path | None = None, stream: TextIO | None = None) -> None:
    """Route all logging to JSON lines on ``stream`` (default stderr) and ``log_file``."""
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    formatter = JsonFormatter()
    handlers: list[logging.Handler] = [logging.StreamHandler(stream or sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.handlers.WatchedFileHandler(log_file, encoding="utf-8"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(_Withheld())
        root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("watchdog").setLevel(logging.WARNING)
    if level != "debug":  # the runtime logs every file it writes; the worker logs one line per study
        logging.getLogger("triage.outputs").setLevel(logging.WARNING)
    logging.getLogger("pydicom").setLevel(logging.WARNING)
    logging.getLogger("highdicom").setLevel(logging.WARNING)
    warnings.showwarning = _show_warning
