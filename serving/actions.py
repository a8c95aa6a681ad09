"""On-positive actions: a shell command (``--on-positive CMD``) or a webhook (``--webhook URL``), run once
per positive study with the study's result record (JSON) on stdin / as the POST body; or a built-in
notification: HL7 v2 ORU^R01 over MLLP (``--on-positive-hl7``, serving/notify_hl7.py) or a FHIR R4
DiagnosticReport + Observation (``--on-positive-fhir``, serving/notify_fhir.py).

The worker records the action in the transaction that finishes the study; the store keeps at most one
per (study, kind, target), so a later version of the same study does not notify again, and a restart
does not re-run a finished action. Delivery is *at least once*: an action interrupted by a crash is run
again at the next start; the command gets ``TRIAGE_ACTION_ID`` (and the webhook an ``Idempotency-Key``
header) to recognise a repeat. Failures (exit status ≠ 0, timeout; HTTP errors other than 4xx, network
errors) are retried with back-off up to ``--action-attempts`` times; a 4xx answer (except 408 and 429)
fails at once.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request

from serving.config import ServiceConfig
from serving.loop import Loop
from serving.notify_common import finding
from serving.policy import backoff
from serving.store import JobStore

logger = logging.getLogger(__name__)

COMMAND_TIMEOUT = 120.0
WEBHOOK_TIMEOUT = 15.0


class ActionRunner(Loop):
    """Runs due actions in its own thread."""

    def __init__(self, config: ServiceConfig, store: JobStore) -> None:
        super().__init__("actions")
        self.config = config
        self.store = store

    def _run(self) -> None:
        while not self._stop.is_set():
            rows = self.store.due("actions", time.time(), limit=10)
            if not rows:
                self._sleep_until_due(self.store, "actions")
                continue
            for row in rows:
                if self._stop.is_set():
                    break
                self._run_one(row)

    def _run_one(self, row: sqlite3.Row) -> None:
        action_id, attempts = int(row["id"]), int(row["attempts"]) + 1
        self.store.set_row("actions", action_id, state="running", attempts=attempts)
        try:
            if row["kind"] == "command":
                error, permanent = self._command(row)
            elif row["kind"] == "hl7":
                error, permanent = self._hl7(row)
            elif row["kind"] == "fhir":
                error, permanent = self._fhir(row)
            else:
                error, permanent = self._webhook(row)
        except Exception as exc:
            error, permanent = f"{type(exc).__name__}: {exc}", False
        extra = {
            "event": "action",
            "kind": row["kind"],
            "study_uid": row["study_uid"],
            "action_id": action_id,
        }
        if error is None:
            self.store.set_row("actions", action_id, state="done", done_at=time.time(), last_error=None)
            logger.info("on-positive %s done", row["kind"], extra=extra)
        elif permanent or attempts >= self.config.action_attempts:
            self.store.set_row("actions", action_id, state="failed", last_error=error)
            logger.error(
                "on-positive %s failed for good after %d attempt(s): %s",
                row["kind"],
                attempts,
                error,
                extra=extra,
            )
        else:
            delay = backoff(attempts, self.config.retry_base, self.config.retry_max)
            self.store.set_row(
                "actions", action_id, state="pending", not_before=time.time() + delay, last_error=error
            )
            logger.warning(
                "on-positive %s failed (%s); retry in %.0f s", row["kind"], error, delay, extra=extra
            )

    def _command(self, row: sqlite3.Row) -> tuple[str | None, bool]:
        env = {**os.environ, "TRIAGE_ACTION_ID": str(row["id"]), "TRIAGE_STUDY_UID": str(row["study_uid"])}
        try:
            proc = subprocess.run(
                ["/bin/sh", "-c", str(row["target"])],
                input=str(row["payload"]).encode(),
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=COMMAND_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return f"timed out after {COMMAND_TIMEOUT:.0f} s", False
        if proc.returncode != 0:
            return f"exit status {proc.returncode}", False
        return None, False

    def _webhook(self, row: sqlite3.Row) -> tuple[str | None, bool]:
        request = urllib.request.Request(
            str(row["target"]),
            data=str(row["payload"]).encode(),
            method="POST",
            headers={
                "Content-Type": "application/json",
                "Idempotency-Key": f"triage-action-{row['id']}",
                "User-Agent": "triage",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            permanent = 400 <= exc.code < 500 and exc.code not in (408, 429)
            return f"HTTP {exc.code}", permanent
        except (urllib.error.URLError, OSError) as exc:
            return f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}", False
        return None, False

    def _hl7(self, row: sqlite3.Row) -> tuple[str | None, bool]:
        from serving.notify_hl7 import build_oru, send_mllp

        found = finding(int(row["id"]), str(row["payload"]), self.config.out)
        return send_mllp(str(row["target"]), build_oru(found))

    def _fhir(self, row: sqlite3.Row) -> tuple[str | None, bool]:
        from serving.notify_fhir import build_bundle, post_bundle

        found = finding(int(row["id"]), str(row["payload"]), self.config.out)
        try:
            bundle = build_bundle(found)
        except ValueError as exc:  # pydantic's ValidationError: its text may quote the PatientID, so not kept
            return f"FHIR: the resources fail validation ({type(exc).__name__})", True
        return post_bundle(str(row["target"]), bundle, self.config.fhir_auth, f"triage-action-{row['id']}")
