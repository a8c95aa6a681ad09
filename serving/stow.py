"""Forwarding SEG / SC / SR objects over DICOMweb (STOW-RS, ``--forward-stow URL``), from the durable outbox.

The same outbox as C-STORE forwarding (serving/forward.py), with rows of its own (``dest='stow'``): each
destination keeps its own state, attempts and last error, so a PACS that is down does not hold back the
other. Objects of one study are sent together in one STOW-RS request (at most ``BATCH`` objects); each is
marked ``delivered`` when the server's answer lists it among the stored instances
(ReferencedSOPSequence).

Failures:

- cannot connect, time-out, HTTP 5xx / 408 / 429, a truncated or unreadable answer: retried with
  back-off (at most ``--retry-max`` seconds apart) until delivered, however long the server is down;
- HTTP 401 (token expired or credentials wrong): retried the same way; the credentials are read again
  from their file or variable before every request, so a refreshed token is used without a restart;
- another 4xx, or an object listed in the answer's FailedSOPSequence: retried up to
  ``--forward-max-rejections`` times, then ``rejected``.

The reason of the last failure is kept on the row (``triage jobs`` shows it). Exactly once: an object is
marked delivered only after the server confirmed it; a crash between that answer and the commit sends
it again, with the same SOPInstanceUID (a DICOMweb server stores the same instance, not a duplicate).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pydicom

from serving.config import ServiceConfig
from serving.loop import Loop
from serving.metrics import Metrics
from serving.policy import backoff
from serving.store import JobStore
from triage.io.dicomweb import DicomWebError, classify, connect

logger = logging.getLogger(__name__)

DEST = "stow"
BATCH = 20


def _uids(answer: Any, keyword: str) -> set[str]:
    return {str(item.get("ReferencedSOPInstanceUID", "")) for item in answer.get(keyword, None) or []}


class StowForwarder(Loop):
    """Sends the outbox's STOW-RS rows to ``config.forward_stow`` in its own thread."""

    def __init__(self, config: ServiceConfig, store: JobStore, metrics: Metrics) -> None:
        if config.forward_stow is None:
            raise ValueError("StowForwarder needs config.forward_stow")
        super().__init__("stow")
        self.config = config
        self.url = config.forward_stow
        self.store = store
        self.metrics = metrics
        self.client = connect(config.forward_stow, config.stow_auth)
        self.reachable: bool | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            rows = self.store.due("outbox", time.time(), dest=DEST)
            if not rows:
                self._sleep_until_due(self.store, "outbox", DEST)
                continue
            by_study: dict[str, list[sqlite3.Row]] = defaultdict(list)
            for row in rows:
                by_study[str(row["study_uid"])].append(row)
            for batch in by_study.values():
                if self._stop.is_set():
                    break
                try:
                    self._send(batch[:BATCH])
                except Exception as exc:  # never let one bad object stop forwarding
                    logger.exception("STOW-RS forwarding failed: %s", exc, extra={"event": "forward_error"})
                    self._stop.wait(1.0)

    def _send(self, rows: list[sqlite3.Row]) -> None:
        datasets, sendable = [], []
        for row in rows:
            path = Path(self.config.out) / str(row["path"])
            try:
                datasets.append(pydicom.dcmread(path))
                sendable.append(row)
            except (OSError, pydicom.errors.InvalidDicomError) as exc:
                self.store.set_row(
                    "outbox", int(row["id"]), state="missing", last_error=f"cannot read {path}: {exc}"
                )
                self.metrics.forwarded.labels(outcome="missing").inc()
        if not sendable:
            return
        try:
            answer = self.client.store_instances(datasets, study_instance_uid=str(sendable[0]["study_uid"]))
        except Exception as exc:
            error = classify(exc, "STOW-RS")
            if error.status is None or error.transient:
                self._unreachable(sendable, error)
            else:
                for row in sendable:
                    self._refused(row, error.message)
            return
        if self.reachable is not True:
            logger.info("STOW-RS to %s works", self.url, extra={"event": "stow_reachable"})
        self.reachable = True
        stored, failed = _uids(answer, "ReferencedSOPSequence"), _uids(answer, "FailedSOPSequence")
        for row in sendable:
            sop = str(row["sop_uid"])
            if sop in stored:
                self._delivered(row)
            elif sop in failed:
                self._refused(row, "STOW-RS: the server refused the instance (FailedSOPSequence)")
            else:
                self._retry(row, int(row["attempts"]) + 1, "STOW-RS: the answer did not list the instance")

    def _delivered(self, row: sqlite3.Row) -> None:
        self.store.set_row(
            "outbox",
            int(row["id"]),
            state="delivered",
            attempts=int(row["attempts"]) + 1,
            delivered_at=time.time(),
            last_error=None,
        )
        self.metrics.forwarded.labels(outcome="delivered").inc()
        logger.info(
            "forwarded %s over STOW-RS",
            row["kind"],
            extra={
                "event": "forwarded",
                "dest": DEST,
                "study_uid": row["study_uid"],
                "sop_uid": row["sop_uid"],
            },
        )

    def _refused(self, row: sqlite3.Row, reason: str) -> None:
        attempts = int(row["attempts"]) + 1
        if attempts < self.config.forward_max_rejections:
            self._retry(row, attempts, reason)
            self.metrics.forwarded.labels(outcome="failed").inc()
            return
        self.store.set_row("outbox", int(row["id"]), state="rejected", attempts=attempts, last_error=reason)
        self.metrics.forwarded.labels(outcome="rejected").inc()
        logger.error(
            "the DICOMweb server refused a %s %d times (%s); giving up on it",
            row["kind"],
            attempts,
            reason,
            extra={"event": "forward_rejected", "dest": DEST, "study_uid": row["study_uid"]},
        )

    def _retry(self, row: sqlite3.Row, attempts: int, reason: str) -> None:
        delay = backoff(attempts, self.config.retry_base, self.config.retry_max)
        self.store.set_row(
            "outbox", int(row["id"]), attempts=attempts, not_before=time.time() + delay, last_error=reason
        )

    def _unreachable(self, rows: list[sqlite3.Row], error: DicomWebError) -> None:
        if self.reachable is not False:
            logger.error(
                "STOW-RS to %s fails (%s); %d object(s) wait in the outbox",
                self.url,
                error.message,
                len(rows),
                extra={"event": "stow_unreachable"},
            )
        self.reachable = False
        self.metrics.forwarded.labels(outcome="unreachable").inc()
        for row in rows:
            self._retry(row, int(row["attempts"]) + 1, error.message)
