"""The durable job store: one SQLite database (WAL, synchronous=FULL) per service output folder.

Tables
------
``files``      every input file taken in: where it arrived (``origin``), where it is now (``path``), its
               size and mtime at arrival, the study and SOP it holds (NULL when its header could not be
               read), its ``state`` (active, replaced, moved, deleted, quarantined) and a ``pending_op``
               (move, delete, quarantine) that the service carries out after the commit that decided it.
``images``     (StudyInstanceUID, SOPInstanceUID) → the newest file holding it.
``jobs``       one row per study *version*: ``received`` (images arriving; the quiet period runs) →
               ``queued`` → ``running`` → ``done`` | ``failed`` | ``quarantined``; ``superseded`` when a
               newer version of the study was queued before this one ran. The key (study, SHA-256 of the
               sorted SOP set, bundle hash) is unique among queued, running and done versions, so the
               same images under the same bundle are processed once; a study that gains an image gets
               a new version. Files that are not DICOM (no study) get a job of their own, ``quarantined``.
``job_images`` the SOP set of a version and the file chosen for each SOP.
``results``    the version's per-image result records (JSON), written in the commit that ends the job.
``outbox``     DICOM objects to forward, one row per destination (``dest``: dimse = C-STORE, stow =
               STOW-RS), unique per (destination, SOPInstanceUID, content digest).
``actions``    on-positive commands / webhooks, unique per (study, kind, target): once per study.
``meta``       schema version and the byte length of results.jsonl that the database vouches for.

Every state change is one ``BEGIN IMMEDIATE`` transaction, so a kill -9 at any point leaves either the
state before or after it. All methods are thread-safe (one connection behind a lock).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from typing import Any

from serving.database import (
    FILE_OPS,
    FINISHED,
    JOB_STATES,
    SCHEMA_VERSION,
    Arrival,
    Claim,
    ClaimedImage,
    FileOp,
    FinishedJob,
    OutboxItem,
    Outcome,
    StoreError,
    fs_path,
    stored_path,
)
from serving.store_views import StoreViews

__all__ = [
    "JOB_STATES",
    "SCHEMA_VERSION",
    "Arrival",
    "Claim",
    "ClaimedImage",
    "FileOp",
    "FinishedJob",
    "JobStore",
    "OutboxItem",
    "Outcome",
    "StoreError",
    "sop_set_digest",
]


def sop_set_digest(sops: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(sops)).encode()).hexdigest()


class JobStore(StoreViews):
    """The service's durable state; see the module docstring.

    ``destinations``: where finished versions' outbox objects go, one outbox row per destination
    ("dimse": C-STORE, "stow": STOW-RS), each with its own state, attempts and last error.
    """

    destinations: tuple[str, ...] = ("dimse",)

    # --- arrivals -------------------------------------------------------------------------------------

    def is_known(self, path: str, size: int, mtime_ns: int) -> bool:
        """Whether this exact file (origin path, size, mtime) was taken in and is expected to still be
        there (a file moved or quarantined away and dropped again is new)."""
        rows = self._query(
            "SELECT 1 FROM files WHERE origin=? AND size=? AND mtime_ns=? AND state IN ('active', 'replaced')"
            " LIMIT 1",
            (stored_path(path), size, mtime_ns),
        )
        return bool(rows)

    def register(self, arrival: Arrival) -> int:
        """Take in one complete file; returns its file id (see :meth:`register_many`)."""
        return self.register_many([arrival])[0]

    def register_many(self, arrivals: Sequence[Arrival]) -> list[int]:
        """Take in complete files in one transaction; returns their file ids.

        A readable file becomes the study's current file for its SOP (an earlier file of the same SOP is
        ``replaced``; it is disposed of with the version that processes the SOP) and opens or extends the
        study's ``received`` version. A file whose header failed gets a quarantined job of its own.
        """
        now = time.time()
        with self.tx() as c:
            return [self._register(c, arrival, now) for arrival in arrivals]

    def _register(self, c: sqlite3.Connection, arrival: Arrival, now: float) -> int:
        path = stored_path(arrival.path)
        c.execute(
            "UPDATE files SET state='replaced', pending_op=NULL WHERE path=? AND state='active'",
            (path,),
        )
        cur = c.execute(
            "INSERT INTO files (origin, path, size, mtime_ns, study_uid, sop_uid, arrived_at, error)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                path,
                path,
                arrival.size,
                arrival.mtime_ns,
                arrival.study_uid,
                arrival.sop_uid,
                arrival.arrived_at,
                json.dumps(arrival.error) if arrival.error else None,
            ),
        )
        file_id = int(cur.lastrowid or 0)
        if arrival.error is not None or arrival.study_uid is None or arrival.sop_uid is None:
            self._quarantine_unreadable(c, file_id, arrival, now)
            return file_id
        prev = c.execute(
            "SELECT f.id, f.path, f.state FROM images i JOIN files f ON f.id = i.file_id"
            " WHERE i.study_uid=? AND i.sop_uid=?",
            (arrival.study_uid, arrival.sop_uid),
        ).fetchone()
        if prev is not None and prev["state"] == "active" and prev["path"] != path:
            c.execute("UPDATE files SET state='replaced' WHERE id=?", (prev["id"],))
        c.execute(
            "INSERT INTO images (study_uid, sop_uid, file_id) VALUES (?, ?, ?)"
            " ON CONFLICT (study_uid, sop_uid) DO UPDATE SET file_id=excluded.file_id",
            (arrival.study_uid, arrival.sop_uid, file_id),
        )
        job = c.execute(
            "SELECT id FROM jobs WHERE study_uid=? AND state='received'", (arrival.study_uid,)
        ).fetchone()
        if job is not None:
            c.execute(
                "UPDATE jobs SET last_arrival=max(last_arrival, ?), first_arrival=min(first_arrival, ?)"
                " WHERE id=?",
                (arrival.arrived_at, arrival.arrived_at, job["id"]),
            )
        else:
            c.execute(
                "INSERT INTO jobs (study_uid, version, bundle, state, first_arrival, last_arrival,"
                " created_at) VALUES (?, ?, ?, 'received', ?, ?, ?)",
                (
                    arrival.study_uid,
                    self._next_version(c, arrival.study_uid),
                    self.bundle_hash,
                    arrival.arrived_at,
                    arrival.arrived_at,
                    now,
                ),
            )
        return file_id

    @staticmethod
    def _next_version(c: sqlite3.Connection, study_uid: str) -> int:
        row = c.execute("SELECT max(version) FROM jobs WHERE study_uid=?", (study_uid,)).fetchone()
        return int(row[0] or 0) + 1

    def _quarantine_unreadable(
        self, c: sqlite3.Connection, file_id: int, arrival: Arrival, now: float
    ) -> None:
        record = dict(arrival.error or {})
        cur = c.execute(
            "INSERT INTO jobs (study_uid, version, bundle, state, error_code, message, first_arrival,"
            " last_arrival, created_at, queued_at, started_at, finished_at, positive)"
            " VALUES (NULL, 0, ?, 'quarantined', ?, ?, ?, ?, ?, ?, ?, ?, 0)",
            (
                self.bundle_hash,
                record.get("error_code"),
                record.get("message"),
                arrival.arrived_at,
                arrival.arrived_at,
                now,
                now,
                now,
                now,
            ),
        )
        job_id = int(cur.lastrowid or 0)
        c.execute(
            "INSERT INTO results (job_id, seq, study_uid, sop_uid, record) VALUES (?, 0, NULL, NULL, ?)",
            (job_id, json.dumps(record)),
        )
        c.execute("UPDATE files SET pending_op='quarantine' WHERE id=?", (file_id,))

    def received_due(self, now: float, quiet: float) -> list[tuple[int, str, float, list[str]]]:
        """Received versions whose last image arrived ``quiet`` seconds ago or earlier:
        (job id, study, last arrival, paths of the study's current files)."""
        rows = self._query(
            "SELECT id, study_uid, last_arrival FROM jobs WHERE state='received' AND last_arrival <= ?"
            " ORDER BY first_arrival, id",
            (now - quiet,),
        )
        out = []
        for row in rows:
            paths = self._query(
                "SELECT f.path FROM images i JOIN files f ON f.id = i.file_id WHERE i.study_uid=?",
                (row["study_uid"],),
            )
            out.append(
                (
                    int(row["id"]),
                    str(row["study_uid"]),
                    float(row["last_arrival"]),
                    [fs_path(str(p["path"])) for p in paths],
                )
            )
        return out

    def queue(self, job_id: int) -> bool:
        """Close one received version; True if queued (see :meth:`queue_many`)."""
        return bool(self.queue_many([job_id]))

    def queue_many(self, job_ids: Sequence[int]) -> list[int]:
        """Close received versions in one transaction: fix each one's SOP set and queue it. Returns the
        ids queued. A version whose SOP set and bundle were already queued, running or done (re-sent
        images) is dropped instead; older queued versions of a study are superseded (the new one covers
        their images)."""
        now = time.time()
        with self.tx() as c:
            return [job_id for job_id in job_ids if self._queue(c, job_id, now)]

    @staticmethod
    def _queue(c: sqlite3.Connection, job_id: int, now: float) -> bool:
        job = c.execute("SELECT * FROM jobs WHERE id=? AND state='received'", (job_id,)).fetchone()
        if job is None:
            return False
        images = c.execute(
            "SELECT sop_uid, file_id FROM images WHERE study_uid=?", (job["study_uid"],)
        ).fetchall()
        digest = sop_set_digest(str(r["sop_uid"]) for r in images)
        same = c.execute(
            "SELECT id FROM jobs WHERE study_uid=? AND sop_set=? AND bundle=?"
            " AND state IN ('queued', 'running', 'done')",
            (job["study_uid"], digest, job["bundle"]),
        ).fetchone()
        if same is not None:  # re-sent images: nothing new to process
            c.execute("DELETE FROM jobs WHERE id=?", (job_id,))
            return False
        c.execute(
            "UPDATE jobs SET state='superseded', finished_at=? WHERE study_uid=? AND state='queued'",
            (now, job["study_uid"]),
        )
        c.execute("UPDATE jobs SET state='queued', sop_set=?, queued_at=? WHERE id=?", (digest, now, job_id))
        c.executemany(
            "INSERT INTO job_images (job_id, sop_uid, file_id) VALUES (?, ?, ?)",
            [(job_id, r["sop_uid"], r["file_id"]) for r in images],
        )
        return True

    # --- the worker ------------------------------------------------------------------------------------

    def recover_running(self, max_attempts: int) -> tuple[int, int]:
        """At start-up: running versions (interrupted by a crash) go back to queued, or to failed when
        they were already tried ``max_attempts`` times (a study that crashes the process each time must
        not crash it forever). Returns (requeued, failed)."""
        now = time.time()
        with self.tx() as c:
            failed = c.execute(
                "UPDATE jobs SET state='failed', finished_at=?, exported=0, error_code='internal_error',"
                " message='the service stopped while processing this study ' || attempts || ' times'"
                " WHERE state='running' AND attempts >= ?",
                (now, max_attempts),
            ).rowcount
            if failed:
                for row in c.execute(
                    "SELECT id FROM jobs WHERE state='failed' AND exported=0 AND id NOT IN"
                    " (SELECT job_id FROM results)"
                ).fetchall():
                    self._error_results(c, int(row["id"]))
            requeued = c.execute(
                "UPDATE jobs SET state='queued', not_before=0 WHERE state='running'"
            ).rowcount
            c.execute("UPDATE actions SET state='pending' WHERE state='running'")
        return requeued, failed

    def _error_results(self, c: sqlite3.Connection, job_id: int) -> None:
        job = c.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        rows = c.execute(
            "SELECT ji.sop_uid, f.path FROM job_images ji JOIN files f ON f.id = ji.file_id WHERE ji.job_id=?"
            " ORDER BY ji.sop_uid",
            (job_id,),
        ).fetchall()
        for seq, row in enumerate(rows):
            record = {
                "input": fs_path(str(row["path"])),
                "status": "error",
                "error_code": job["error_code"],
                "message": job["message"],
                "study_uid": job["study_uid"],
                "sop_uid": row["sop_uid"],
            }
            c.execute(
                "INSERT INTO results (job_id, seq, study_uid, sop_uid, record) VALUES (?, ?, ?, ?, ?)",
                (job_id, seq, job["study_uid"], row["sop_uid"], json.dumps(record)),
            )

    def claim(self, now: float, busy_studies: Iterable[str] = ()) -> Claim | None:
        """The oldest due queued version whose study is not busy, now running; None if there is none."""
        claims = self.claim_many(now, busy_studies, limit=1)
        return claims[0] if claims else None

    def claim_many(self, now: float, busy_studies: Iterable[str] = (), limit: int = 8) -> list[Claim]:
        """Up to ``limit`` of the oldest due queued versions, at most one per study and none of
        ``busy_studies``, now running (attempts + 1), in one transaction."""
        busy = set(busy_studies)
        claims: list[Claim] = []
        with self.tx() as c:
            rows = c.execute(
                "SELECT * FROM jobs WHERE state='queued' AND not_before <= ?"
                " ORDER BY first_arrival, id LIMIT ?",
                (now, 4 * limit + len(busy)),
            ).fetchall()
            for job in rows:
                if len(claims) >= limit or job["study_uid"] in busy:
                    continue
                busy.add(job["study_uid"])
                c.execute(
                    "UPDATE jobs SET state='running', started_at=?, attempts=attempts+1 WHERE id=?",
                    (now, job["id"]),
                )
                # processed with the bundle loaded now (after an upgrade: versions queued before it)
                c.execute(
                    "UPDATE jobs SET bundle=? WHERE id=? AND NOT EXISTS (SELECT 1 FROM jobs o WHERE"
                    " o.study_uid = jobs.study_uid AND o.sop_set = jobs.sop_set AND o.bundle = ?"
                    " AND o.id != jobs.id"
                    " AND o.state IN ('queued', 'running', 'done'))",
                    (self.bundle_hash, job["id"], self.bundle_hash),
                )
                claims.append(self._claimed(c, job, now))
        return claims

    def unclaim(self, job_ids: Sequence[int]) -> None:
        """Claimed versions that were never started go back to the queue (shutdown)."""
        with self.tx() as c:
            c.executemany(
                "UPDATE jobs SET state='queued', attempts=max(0, attempts-1) WHERE id=? AND state='running'",
                [(i,) for i in job_ids],
            )

    def _claimed(self, c: sqlite3.Connection, job: sqlite3.Row, now: float) -> Claim:
        rows = c.execute(
            "SELECT ji.sop_uid, ji.file_id, f.path, f.state FROM job_images ji"
            " JOIN files f ON f.id = ji.file_id WHERE ji.job_id=? ORDER BY f.path",
            (job["id"],),
        ).fetchall()
        images = []
        for row in rows:
            if row["state"] in ("active", "replaced", "moved"):
                images.append(ClaimedImage(row["sop_uid"], row["file_id"], fs_path(str(row["path"]))))
            else:
                carried = self._carried(c, job["study_uid"], row["sop_uid"])
                images.append(ClaimedImage(row["sop_uid"], row["file_id"], None, carried))
        return Claim(
            int(job["id"]),
            str(job["study_uid"]),
            int(job["version"]),
            int(job["attempts"]) + 1,
            float(job["first_arrival"]),
            now,
            tuple(images),
        )

    @staticmethod
    def _carried(c: sqlite3.Connection, study_uid: str, sop_uid: str) -> dict[str, Any] | None:
        row = c.execute(
            "SELECT r.record FROM results r JOIN jobs j ON j.id = r.job_id"
            " WHERE r.study_uid=? AND r.sop_uid=? AND j.state IN ('done', 'quarantined')"
            " ORDER BY j.version DESC LIMIT 1",
            (study_uid, sop_uid),
        ).fetchone()
        return None if row is None else dict(json.loads(row["record"]))

    def finish(self, job_id: int, outcome: Outcome) -> None:
        """The commit point of one version (see :meth:`commit`)."""
        self.commit([(job_id, outcome)], [])

    def retry(self, job_id: int, error_code: str, message: str, not_before: float) -> None:
        """Back to queued after a transient failure, not before ``not_before`` (see :meth:`commit`)."""
        self.commit([], [(job_id, error_code, message, not_before)])

    def commit(
        self, finished: Sequence[tuple[int, Outcome]], retries: Sequence[tuple[int, str, str, float]]
    ) -> None:
        """The commit point of versions, all or nothing: each finished one's state, records, what to do
        with its files, what to forward and which actions to run; each retried one back to queued, not
        before its wall-clock time."""
        for _, outcome in finished:
            if outcome.state not in FINISHED:
                raise ValueError(f"outcome state must be one of {FINISHED}, got {outcome.state!r}")
        now = time.time()
        with self.tx() as c:
            for job_id, outcome in finished:
                self._finish(c, job_id, outcome, now)
            c.executemany(
                "UPDATE jobs SET state='queued', not_before=?, error_code=?, message=? WHERE id=?",
                [(not_before, code, message, job_id) for job_id, code, message, not_before in retries],
            )

    def _finish(self, c: sqlite3.Connection, job_id: int, outcome: Outcome, now: float) -> None:
        job = c.execute("SELECT study_uid FROM jobs WHERE id=?", (job_id,)).fetchone()
        c.execute(
            "UPDATE jobs SET state=?, finished_at=?, error_code=?, message=?, positive=?, priority=?,"
            " exported=0 WHERE id=?",
            (
                outcome.state,
                now,
                outcome.error_code,
                outcome.message,
                None if outcome.positive is None else int(outcome.positive),
                outcome.priority,
                job_id,
            ),
        )
        c.execute("DELETE FROM results WHERE job_id=?", (job_id,))
        c.executemany(
            "INSERT INTO results (job_id, seq, study_uid, sop_uid, record) VALUES (?, ?, ?, ?, ?)",
            [
                (job_id, seq, r.get("study_uid") or job["study_uid"], r.get("sop_uid"), json.dumps(r))
                for seq, r in enumerate(outcome.records)
            ],
        )
        for file_id, op, error in outcome.file_ops:
            if op not in FILE_OPS:
                raise ValueError(f"file op must be one of {FILE_OPS}, got {op!r}")
            c.execute(
                "UPDATE files SET pending_op=?, error=coalesce(?, error) WHERE id=?"
                " AND state IN ('active', 'replaced', 'moved')",
                (op, json.dumps(error) if error else None, file_id),
            )
        c.executemany(
            "INSERT OR IGNORE INTO outbox (dest, job_id, study_uid, kind, path, sop_uid, sop_class, digest,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (dest, job_id, job["study_uid"], o.kind, o.path, o.sop_uid, o.sop_class, o.digest, now)
                for o in outcome.outbox
                for dest in self.destinations
            ],
        )
        c.executemany(
            "INSERT OR IGNORE INTO actions (job_id, study_uid, kind, target, payload, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [
                (job_id, job["study_uid"], kind, target, payload, now)
                for kind, target, payload in outcome.actions
            ],
        )

    def requeue_failed(self, job_ids: Sequence[int] = ()) -> int:
        """Admin: put failed versions (all, or the given ids) back in the queue with fresh attempts;
        one whose images were queued again meanwhile as a newer identical version is left failed."""
        marks = ",".join("?" * len(job_ids))
        with self.tx() as c:
            return int(
                c.execute(
                    "UPDATE jobs SET state='queued', attempts=0, not_before=0 WHERE state='failed'"
                    " AND study_uid IS NOT NULL AND NOT EXISTS (SELECT 1 FROM jobs o WHERE"
                    " o.study_uid = jobs.study_uid AND o.sop_set = jobs.sop_set AND o.bundle = jobs.bundle"
                    " AND o.state IN ('queued', 'running', 'done'))"
                    + (f" AND id IN ({marks})" if job_ids else ""),
                    tuple(job_ids),
                ).rowcount
            )
