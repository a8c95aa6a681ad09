"""results.jsonl and worklist.csv of a service, derived from the job store (the source of truth).

``results.jsonl`` gets one line per image of each finished study version: the runtime's result record
plus ``job``, ``version`` and ``job_state``. Lines are appended (and fsynced) after the commit that
finished the version; the store then records the file's new length. At start-up the file is cut back
to that length and every finished version not yet recorded is appended again, so a kill -9 between the
commit and the append — or in the middle of the append — leaves each version's lines exactly once. A
file shorter than the store expects (rotated or edited by hand) is rebuilt from the store.

``worklist.csv`` is rewritten atomically from the newest done version of each study finished within
the configured window, most urgent first (:func:`triage.outputs.batch.write_worklist`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from serving.store import FinishedJob, JobStore
from triage.outputs.atomic import atomic_write_bytes
from triage.outputs.batch import RESULTS_NAME, write_worklist
from triage.outputs.records import ResultRecord

logger = logging.getLogger(__name__)


def lines_of(job: FinishedJob) -> bytes:
    extra: dict[str, Any] = {"job": job.job_id, "version": job.version, "job_state": job.state}
    return b"".join((json.dumps({**r, **extra}, separators=(",", ":")) + "\n").encode() for r in job.records)


class ResultsLog:
    """Keeps ``out/results.jsonl`` equal to the store's finished versions, each exactly once."""

    def __init__(self, out: Path, store: JobStore) -> None:
        self.path = Path(out) / RESULTS_NAME
        self.store = store
        self._lock = threading.Lock()

    def reconcile(self) -> None:
        """Start-up: cut off what the store does not vouch for, rebuild if shorter, then catch up."""
        with self._lock:
            offset = self.store.results_offset()
            size = self.path.stat().st_size if self.path.exists() else 0
            if offset is None and size == 0:
                self.path.touch()
                # claim the file before the first append: a kill -9 between that append and its record
                # must leave a file the next start recognises as this service's (and cuts back to 0)
                self.store.mark_exported([], 0)
            elif offset is None or size < offset:
                logger.warning(
                    "results.jsonl is %d bytes, the job store vouches for %s: rebuilding it from the store",
                    size,
                    offset,
                    extra={"event": "results_rebuild"},
                )
                self._rebuild()
            elif size > offset:
                logger.info(
                    "results.jsonl: dropping %d bytes appended after the last recorded export (re-appended"
                    " from the job store)",
                    size - offset,
                    extra={"event": "results_truncate"},
                )
                with open(self.path, "r+b") as fh:
                    fh.truncate(offset)
                    os.fsync(fh.fileno())
        self.export()

    def _rebuild(self) -> None:
        data = b"".join(lines_of(job) for job in self.store.all_finished())
        atomic_write_bytes(self.path, data)
        self.store.mark_all_exported(len(data))

    def export(self) -> int:
        """Append every finished, not yet exported version; returns how many."""
        with self._lock:
            total = 0
            while jobs := self.store.unexported():
                data = b"".join(lines_of(job) for job in jobs)
                with open(self.path, "ab") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                    offset = fh.tell()
                self.store.mark_exported([job.job_id for job in jobs], offset)
                total += len(jobs)
            return total


class Worklist:
    """Rewrites worklist.csv when asked and at most every ``min_interval`` seconds."""

    def __init__(self, out: Path, store: JobStore, hours: float, min_interval: float = 1.0) -> None:
        self.out = Path(out)
        self.store = store
        self.hours = hours
        self.min_interval = min_interval
        self._dirty = threading.Event()
        self._last = 0.0

    def mark(self) -> None:
        self._dirty.set()

    def refresh(self, force: bool = False) -> bool:
        """Rewrite if marked (or ``force``) and the interval has passed; True if written."""
        now = time.monotonic()
        if not force and (not self._dirty.is_set() or now - self._last < self.min_interval):
            return False
        self._dirty.clear()
        self._last = now
        since = time.time() - self.hours * 3600.0
        records = [ResultRecord.from_dict(r) for r in self.store.latest_versions(since)]
        write_worklist(self.out, records)
        return True
