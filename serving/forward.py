"""Forwarding SEG / SC / SR objects to a PACS by C-STORE, from the durable outbox.

The worker records each object to send in the same transaction that finishes its study (one row per
SOPInstanceUID and content digest, so re-running a study with identical results sends nothing again).
This thread sends what is due over one association at a time and marks each object ``delivered`` right
after the PACS confirms it. Failures:

- cannot connect / association rejected or aborted / 0xA7xx "out of resources": retried with
  back-off (at most ``--retry-max`` seconds apart) until delivered, however long the PACS is down;
- any other failure status (the PACS refuses the object): retried up to ``--forward-max-rejections``
  times, then ``rejected`` (visible in the metrics and the log).

Exactly once: an object is marked delivered after the PACS answered success. Only a crash between
that answer and the commit (milliseconds) sends it again after a restart; its SOPInstanceUID is
deterministic, so the PACS stores the same instance, not a duplicate.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import pydicom
from pydicom import uid as uids
from pynetdicom import AE

from serving.config import Destination, ServiceConfig
from serving.loop import Loop
from serving.metrics import Metrics
from serving.policy import backoff
from serving.store import JobStore
from serving.tls import client_context

logger = logging.getLogger(__name__)

_OK = frozenset({0x0000, 0xB000, 0xB006, 0xB007})  # success and the storage warnings
TRANSFER_SYNTAXES = [uids.ExplicitVRLittleEndian, uids.ImplicitVRLittleEndian]


class Forwarder(Loop):
    """Sends the outbox to ``config.forward`` in its own thread."""

    def __init__(self, config: ServiceConfig, store: JobStore, metrics: Metrics) -> None:
        if config.forward is None:
            raise ValueError("Forwarder needs config.forward")
        super().__init__("forward")
        self.config = config
        self.destination: Destination = config.forward
        self.store = store
        self.metrics = metrics
        self.reachable: bool | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            rows = self.store.due("outbox", time.time(), dest="dimse")
            if not rows:
                self._sleep_until_due(self.store, "outbox", "dimse")
                continue
            try:
                self._send(rows)
            except Exception as exc:  # never let one bad object stop forwarding
                logger.exception("forwarding failed: %s", exc, extra={"event": "forward_error"})
                self._stop.wait(1.0)

    def _send(self, rows: list[sqlite3.Row]) -> None:
        ae = AE(ae_title=self.config.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        for sop_class in sorted({str(r["sop_class"]) for r in rows}):
            ae.add_requested_context(sop_class, TRANSFER_SYNTAXES)
        dest = self.destination
        tls = (client_context(self.config.tls), dest.host) if self.config.tls.enabled else None
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, tls_args=tls)
        if not assoc.is_established:
            self._unreachable(rows, "association rejected" if assoc.is_rejected else "cannot connect")
            return
        if self.reachable is not True:
            logger.info("connected to the PACS %s", dest, extra={"event": "pacs_reachable"})
        self.reachable = True
        try:
            for row in rows:
                if self._stop.is_set():
                    break
                if not self._send_one(assoc, row):
                    break
        finally:
            if assoc.is_established:
                assoc.release()

    def _send_one(self, assoc: Any, row: sqlite3.Row) -> bool:
        """Send one object; False when the association is no longer usable."""
        path = Path(self.config.out) / str(row["path"])
        try:
            ds = pydicom.dcmread(path)
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            self.store.set_row(
                "outbox", int(row["id"]), state="missing", last_error=f"cannot read {path}: {exc}"
            )
            self.metrics.forwarded.labels(outcome="missing").inc()
            logger.error("outbox object %s cannot be read: %s", path, exc, extra={"event": "forward_missing"})
            return True
        status = assoc.send_c_store(ds)
        code = int(status.Status) if status is not None and "Status" in status else None
        attempts = int(row["attempts"]) + 1
        if code in _OK:
            self.store.set_row(
                "outbox",
                int(row["id"]),
                state="delivered",
                attempts=attempts,
                delivered_at=time.time(),
                last_error=None,
            )
            self.metrics.forwarded.labels(outcome="delivered").inc()
            logger.info(
                "forwarded %s",
                row["kind"],
                extra={
                    "event": "forwarded",
                    "study_uid": row["study_uid"],
                    "kind": row["kind"],
                    "sop_uid": row["sop_uid"],
                },
            )
            return True
        if code is None:  # no answer: the association was aborted or timed out
            self._retry(row, attempts, "no response to C-STORE (connection lost)")
            self.metrics.forwarded.labels(outcome="no_response").inc()
            return False
        reason = f"C-STORE failed with status 0x{code:04X}"
        if 0xA700 <= code <= 0xA7FF or attempts < self.config.forward_max_rejections:
            self._retry(row, attempts, reason)
            self.metrics.forwarded.labels(outcome="failed").inc()
        else:
            self.store.set_row(
                "outbox", int(row["id"]), state="rejected", attempts=attempts, last_error=reason
            )
            self.metrics.forwarded.labels(outcome="rejected").inc()
            logger.error(
                "the PACS rejected a %s %d times (%s); giving up on it",
                row["kind"],
                attempts,
                reason,
                extra={"event": "forward_rejected", "study_uid": row["study_uid"], "sop_uid": row["sop_uid"]},
            )
        return True

    def _retry(self, row: sqlite3.Row, attempts: int, reason: str) -> None:
        delay = backoff(attempts, self.config.retry_base, self.config.retry_max)
        self.store.set_row(
            "outbox", int(row["id"]), attempts=attempts, not_before=time.time() + delay, last_error=reason
        )

    def _unreachable(self, rows: list[sqlite3.Row], reason: str) -> None:
        if self.reachable is not False:
            logger.error(
                "the PACS %s is unreachable (%s); %d object(s) wait in the outbox",
                self.destination,
                reason,
                len(rows),
                extra={"event": "pacs_unreachable"},
            )
        self.reachable = False
        self.metrics.forwarded.labels(outcome="unreachable").inc()
        for row in rows:
            self._retry(row, int(row["attempts"]) + 1, reason)
