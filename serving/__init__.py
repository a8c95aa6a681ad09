"""The services around the runtime: `triage watch` (a folder watcher), `triage listen` (a DICOM storage
SCP), their durable SQLite job store, PACS forwarding, on-positive actions, metrics and JSON logs.

Depends on ``triage`` (the runtime) and the ``serving`` extra (watchdog, pynetdicom, prometheus-client);
``triage`` never imports this package except lazily from its CLI. See docs/deploy.md.
"""

from __future__ import annotations

import importlib

REQUIRED = ("watchdog", "pynetdicom", "prometheus_client")


def missing_dependencies() -> list[str]:
    """The serving extra's packages that cannot be imported (module names)."""
    missing = []
    for name in REQUIRED:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing
