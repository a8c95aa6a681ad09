"""JSON-lines logging for the services: one object per line on stderr (journald, docker logs) and
optionally in a file (reopened when logrotate moves it).

Each line: ``{"ts": "2024-05-01T08:30:00.123Z", "level": "INFO", "logger": "serving.worker",
"msg": "study done", ...fields}``; fields are the ``extra={...}`` of the call (``event``, ``study_uid``,
``job``, ``code``, ...). No patient attribute (name, ID, birth date, ...) is ever passed to a log call;
the messages of other libraries and Python warnings, whose text may quote a DICOM value, are logged by
origin only (the runtime's :mod:`triage.logsafe` filter), and pynetdicom's own logger (which dumps data
sets at debug level) is held at WARNING.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import time
from pathlib import Path
from typing import Any, Literal, TextIO, get_args

from triage.logsafe import configure, install_filter

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
LogLevel = Literal["debug", "info", "warning", "error"]
LEVELS: tuple[LogLevel, ...] = get_args(LogLevel)


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


def setup_logging(level: str = "info", log_file: Path | None = None, stream: TextIO | None = None) -> None:
    """Route all logging to JSON lines on ``stream`` (default stderr) and ``log_file``, through the
    runtime's PHI filter (:mod:`triage.logsafe`: third-party messages — pydicom, highdicom, pynetdicom,
    Python warnings — are logged by origin only, their text withheld)."""
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    formatter = JsonFormatter()
    console = logging.StreamHandler(stream or sys.stderr)
    console.setFormatter(formatter)
    configure(getattr(logging, level.upper()), console, third_party_level=logging.WARNING)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.WatchedFileHandler(log_file, encoding="utf-8")
        handler.setFormatter(formatter)
        install_filter([handler], logging.WARNING)
        handler._triage_handler = True  # type: ignore[attr-defined]  # replaced by a later configure()
        logging.getLogger().addHandler(handler)
    if level != "debug":  # the runtime logs every file it writes; the worker logs one line per study
        logging.getLogger("triage.outputs").setLevel(logging.WARNING)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # it dumps data sets at debug level
