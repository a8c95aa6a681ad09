"""The SQLite database under the job store: schema, connection, transactions, and the plain row
queries (file operations, the results.jsonl export, outbox and action rows, reporting) and the records
the store passes around (Arrival, Claim, Outcome, ...). The job state
machine (arrivals, versions, claims, the commit that ends a version) is :mod:`serving.store`.

One database per service output folder, in WAL mode with ``synchronous=FULL`` (a commit survives a
power cut, and a reader — ``triage jobs``, the metrics — never blocks the writer). Every change is one
``BEGIN IMMEDIATE`` transaction; all methods are thread-safe (one connection behind a lock).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = "2"  # 2: outbox rows per destination (dest); a schema-1 store is migrated
JOB_STATES = ("received", "queued", "running", "done", "failed", "quarantined", "superseded")
FINISHED = ("done", "failed", "quarantined")
FILE_OPS = ("move", "delete", "quarantine")

_ESCAPED = "\x00fs:"  # no file name holds NUL: marks a path kept as the hex of its bytes


def stored_path(path: str) -> str:
    """``path`` as the store keeps it (SQLite text is UTF-8): as is, or — a name that is not UTF-8, which
    Python holds with surrogate escapes (a Latin-1 name from a Windows share) — NUL, "fs:" and the hex of
    its bytes. :func:`fs_path` is the inverse."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return _ESCAPED + os.fsencode(path).hex()
    return path


def fs_path(text: str) -> str:
    """The file-system path of a path the store keeps (see :func:`stored_path`)."""
    if text.startswith(_ESCAPED):
        return os.fsdecode(bytes.fromhex(text[len(_ESCAPED) :]))
    return text


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    origin TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    study_uid TEXT,
    sop_uid TEXT,
    arrived_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'active',
    pending_op TEXT,
    error TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS files_active_path ON files(path) WHERE state = 'active';
CREATE INDEX IF NOT EXISTS files_origin ON files(origin, size, mtime_ns);
CREATE INDEX IF NOT EXISTS files_pending ON files(pending_op) WHERE pending_op IS NOT NULL;
CREATE TABLE IF NOT EXISTS images (
    study_uid TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    file_id INTEGER NOT NULL REFERENCES files(id),
    PRIMARY KEY (study_uid, sop_uid)
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    study_uid TEXT,
    version INTEGER NOT NULL,
    sop_set TEXT,
    bundle TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    error_code TEXT,
    message TEXT,
    first_arrival REAL NOT NULL,
    last_arrival REAL NOT NULL,
    created_at REAL NOT NULL,
    queued_at REAL,
    started_at REAL,
    finished_at REAL,
    positive INTEGER,
    priority REAL,
    exported INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_key ON jobs(study_uid, sop_set, bundle)
    WHERE state IN ('queued', 'running', 'done');
CREATE UNIQUE INDEX IF NOT EXISTS jobs_received ON jobs(study_uid) WHERE state = 'received';
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, not_before);
CREATE INDEX IF NOT EXISTS jobs_study ON jobs(study_uid, version);
CREATE TABLE IF NOT EXISTS job_images (
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    sop_uid TEXT NOT NULL,
    file_id INTEGER NOT NULL REFERENCES files(id),
    PRIMARY KEY (job_id, sop_uid)
);
CREATE TABLE IF NOT EXISTS results (
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    seq INTEGER NOT NULL,
    study_uid TEXT,
    sop_uid TEXT,
    record TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
CREATE INDEX IF NOT EXISTS results_sop ON results(study_uid, sop_uid);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    dest TEXT NOT NULL DEFAULT 'dimse',
    job_id INTEGER NOT NULL,
    study_uid TEXT NOT NULL,
    kind TEXT NOT NULL,
    path TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    sop_class TEXT NOT NULL,
    digest TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at REAL NOT NULL,
    delivered_at REAL,
    UNIQUE (dest, sop_uid, digest)
);
CREATE TABLE IF NOT EXISTS actions (
    id INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL,
    study_uid TEXT NOT NULL,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at REAL NOT NULL,
    done_at REAL,
    UNIQUE (study_uid, kind, target)
);
"""


_SET_OFFSET = (
    "INSERT INTO meta VALUES ('results_offset', ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value"
)


class StoreError(Exception):
    """The database cannot be used (another schema version, a damaged file); the message says why."""


@dataclass(frozen=True)
class Arrival:
    """A complete input file: where it is, its identity (size, mtime), when it arrived (wall clock, the
    time it stopped changing) and the study / SOP its header names; ``error`` (a JSON record) when the
    header could not be read, then study and SOP are None."""

    path: str
    size: int
    mtime_ns: int
    arrived_at: float
    study_uid: str | None
    sop_uid: str | None
    error: dict[str, Any] | None = None


@dataclass(frozen=True)
class ClaimedImage:
    """One SOP of a claimed version: ``path`` to process, or ``carried`` (the record of an earlier version,
    when the file is gone: deleted or quarantined after that version)."""

    sop_uid: str
    file_id: int
    path: str | None
    carried: dict[str, Any] | None = None


@dataclass(frozen=True)
class Claim:
    job_id: int
    study_uid: str
    version: int
    attempts: int
    first_arrival: float
    started_at: float
    images: tuple[ClaimedImage, ...]


@dataclass(frozen=True)
class OutboxItem:
    kind: str
    path: str  # relative to the output folder
    sop_uid: str
    sop_class: str
    digest: str


@dataclass
class Outcome:
    """How a claimed version ends; written in one transaction by :meth:`JobStore.finish`."""

    state: str  # done | failed | quarantined
    records: list[dict[str, Any]]
    error_code: str | None = None
    message: str | None = None
    positive: bool | None = None
    priority: float | None = None
    file_ops: list[tuple[int, str, dict[str, Any] | None]] = field(default_factory=list)  # (file, op, error)
    outbox: list[OutboxItem] = field(default_factory=list)
    actions: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, target, payload JSON)


@dataclass(frozen=True)
class FileOp:
    file_id: int
    op: str
    path: str
    origin: str
    study_uid: str | None
    sop_uid: str | None
    error: dict[str, Any] | None


@dataclass(frozen=True)
class FinishedJob:
    job_id: int
    study_uid: str | None
    version: int
    state: str
    records: list[dict[str, Any]]


def _migrate_1_to_2(c: sqlite3.Connection) -> None:
    """Schema 1 → 2: the outbox gains ``dest`` (its rows were C-STORE rows: 'dimse')."""
    columns = [r[1] for r in c.execute("PRAGMA table_info(outbox)").fetchall()]
    if "dest" not in columns:
        keep = ", ".join(columns)
        c.execute("ALTER TABLE outbox RENAME TO outbox_v1")
        statement = _SCHEMA[_SCHEMA.index("CREATE TABLE IF NOT EXISTS outbox") :]
        c.execute(statement[: statement.index(";")])
        c.execute(f"INSERT INTO outbox ({keep}, dest) SELECT {keep}, 'dimse' FROM outbox_v1")
        c.execute("DROP TABLE outbox_v1")
    c.execute("UPDATE meta SET value=? WHERE key='schema'", (SCHEMA_VERSION,))


class Database:
    """The connection; ``bundle_hash`` keys new study versions."""

    def __init__(self, path: Path, bundle_hash: str) -> None:
        self.path = Path(path)
        self.bundle_hash = bundle_hash
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            self._db.row_factory = sqlite3.Row
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: SQLite refused WAL mode (got {mode}); use a local disk")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            with self.tx() as c:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        c.execute(statement)
                row = c.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
                if row is None:
                    c.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
                elif row[0] == "1":
                    _migrate_1_to_2(c)
                elif row[0] != SCHEMA_VERSION:
                    raise StoreError(
                        f"{self.path} has job-store schema {row[0]}; this version of triage reads schema "
                        f"{SCHEMA_VERSION} (use a new --out or an older triage)"
                    )
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: cannot open the job store: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            with contextlib.suppress(sqlite3.DatabaseError):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE … COMMIT; ROLLBACK on any exception)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._db.execute(sql, args).fetchall())

    # --- outbox and actions -------------------------------------------------------------------------------

    def due(self, table: str, now: float, limit: int = 50, dest: str | None = None) -> list[sqlite3.Row]:
        """Pending outbox or action rows that are due (oldest first); outbox rows of ``dest`` only
        when given."""
        if table not in ("outbox", "actions"):
            raise ValueError(f"table must be outbox or actions, got {table!r}")
        where, args = ("", ()) if dest is None else (" AND dest=?", (dest,))
        return self._query(
            f"SELECT * FROM {table} WHERE state='pending' AND not_before <= ?{where} ORDER BY id LIMIT ?",
            (now, *args, limit),
        )

    def set_row(self, table: str, row_id: int, **values: Any) -> None:
        """Update columns of one outbox or action row (state, attempts, not_before, last_error, ...)."""
        if table not in ("outbox", "actions"):
            raise ValueError(f"table must be outbox or actions, got {table!r}")
        allowed = {"state", "attempts", "not_before", "last_error", "delivered_at", "done_at"}
        bad = set(values) - allowed
        if bad:
            raise ValueError(f"unknown columns {sorted(bad)}; valid: {sorted(allowed)}")
        assignments = ", ".join(f"{k}=?" for k in values)
        with self.tx() as c:
            c.execute(f"UPDATE {table} SET {assignments} WHERE id=?", (*values.values(), row_id))

    def next_due(self, table: str, dest: str | None = None) -> float | None:
        where, args = ("", ()) if dest is None else (" AND dest=?", (dest,))
        rows = self._query(f"SELECT min(not_before) FROM {table} WHERE state='pending'{where}", args)
        return None if rows[0][0] is None else float(rows[0][0])

    # --- reporting ----------------------------------------------------------------------------------------

    def counts(self, table: str) -> dict[str, int]:
        """Rows by state: jobs with a study (study versions), outbox or actions."""
        if table not in ("jobs", "outbox", "actions"):
            raise ValueError(f"table must be jobs, outbox or actions, got {table!r}")
        where = " WHERE study_uid IS NOT NULL" if table == "jobs" else ""
        rows = self._query(f"SELECT state, count(*) FROM {table}{where} GROUP BY state")
        return {str(r[0]): int(r[1]) for r in rows}

    def unattributed_quarantined(self) -> int:
        return int(self._query("SELECT count(*) FROM jobs WHERE study_uid IS NULL")[0][0])

    def idle(self) -> bool:
        """No version received, queued or running."""
        rows = self._query("SELECT 1 FROM jobs WHERE state IN ('received', 'queued', 'running') LIMIT 1")
        return not rows

    def untried(self, table: str) -> int:
        """Pending outbox / action rows never tried yet."""
        return int(self._query(f"SELECT count(*) FROM {table} WHERE state='pending' AND attempts=0")[0][0])

    def latest_versions(self, since: float) -> list[dict[str, Any]]:
        """Records of the newest done version of each study finished since ``since`` (for the worklist)."""
        rows = self._query(
            "SELECT r.record FROM results r JOIN jobs j ON j.id = r.job_id WHERE j.id IN ("
            "  SELECT id FROM jobs j2 WHERE j2.state='done' AND j2.study_uid IS NOT NULL AND j2.version ="
            "  (SELECT max(version) FROM jobs j3 WHERE j3.study_uid = j2.study_uid AND j3.state='done'))"
            " AND j.finished_at >= ? ORDER BY j.id, r.seq",
            (since,),
        )
        return [json.loads(r["record"]) for r in rows]

    def jobs(self, states: Sequence[str] = JOB_STATES, limit: int = 100) -> list[sqlite3.Row]:
        marks = ",".join("?" * len(states))
        return self._query(
            f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY id DESC LIMIT ?", (*states, limit)
        )

    def files_of(self, job_id: int) -> list[sqlite3.Row]:
        return self._query(
            "SELECT f.* FROM job_images ji JOIN files f ON f.id = ji.file_id WHERE ji.job_id=?", (job_id,)
        )

    def disposable_files(self, job_id: int) -> list[sqlite3.Row]:
        """Files holding the version's SOPs that are still where they arrived (the processed file and
        earlier duplicates of it), except a replaced file whose path now holds a newer arrival."""
        return self._query(
            "SELECT f.* FROM job_images ji JOIN jobs j ON j.id = ji.job_id"
            " JOIN files f ON f.study_uid = j.study_uid AND f.sop_uid = ji.sop_uid"
            " WHERE ji.job_id=? AND f.id <= ji.file_id AND f.state IN ('active', 'replaced')"
            " AND f.pending_op IS NULL"
            " AND f.path = f.origin AND NOT (f.state = 'replaced' AND EXISTS"
            " (SELECT 1 FROM files a WHERE a.path = f.path AND a.state = 'active'))",
            (job_id,),
        )

    def redundant_files(self, study_uid: str) -> list[sqlite3.Row]:
        """Files of a study still where they arrived that no version will process: re-sent copies of
        images an earlier version already processed (disposed of like that version's files)."""
        return self._query(
            "SELECT f.* FROM files f WHERE f.study_uid=? AND f.state IN ('active', 'replaced')"
            " AND f.pending_op IS NULL AND f.path = f.origin"
            " AND NOT EXISTS (SELECT 1 FROM job_images ji JOIN jobs j ON j.id = ji.job_id"
            "  WHERE ji.file_id = f.id AND j.state IN ('queued', 'running'))"
            " AND EXISTS (SELECT 1 FROM job_images ji JOIN jobs j ON j.id = ji.job_id"
            "  WHERE j.study_uid = f.study_uid AND ji.sop_uid = f.sop_uid AND j.state = 'done')",
            (study_uid,),
        )

    def set_ops(self, ops: Sequence[tuple[int, str]]) -> None:
        """Schedule file operations (file id, op) outside a version's commit."""
        with self.tx() as c:
            for file_id, op in ops:
                if op not in FILE_OPS:
                    raise ValueError(f"file op must be one of {FILE_OPS}, got {op!r}")
                c.execute("UPDATE files SET pending_op=? WHERE id=? AND pending_op IS NULL", (op, file_id))

    # --- results.jsonl export ---------------------------------------------------------------------------

    def results_offset(self) -> int | None:
        rows = self._query("SELECT value FROM meta WHERE key='results_offset'")
        return int(rows[0][0]) if rows else None

    def unexported(self, limit: int = 1000) -> list[FinishedJob]:
        """Finished versions whose records are not yet in results.jsonl, in finishing order."""
        jobs = self._query(
            "SELECT id, study_uid, version, state FROM jobs WHERE state IN ('done', 'failed', 'quarantined')"
            " AND exported=0 ORDER BY finished_at, id LIMIT ?",
            (limit,),
        )
        return [self._finished(row) for row in jobs]

    def all_finished(self) -> Iterator[FinishedJob]:
        """Every finished version, in finishing order (to rebuild results.jsonl)."""
        last = (-1.0, -1)
        while True:
            rows = self._query(
                "SELECT id, study_uid, version, state, finished_at FROM jobs"
                " WHERE state IN ('done', 'failed', 'quarantined') AND (finished_at, id) > (?, ?)"
                " ORDER BY finished_at, id LIMIT 500",
                last,
            )
            if not rows:
                return
            for row in rows:
                yield self._finished(row)
            last = (float(rows[-1]["finished_at"]), int(rows[-1]["id"]))

    def _finished(self, row: sqlite3.Row) -> FinishedJob:
        records = [
            json.loads(r["record"])
            for r in self._query("SELECT record FROM results WHERE job_id=? ORDER BY seq", (row["id"],))
        ]
        return FinishedJob(int(row["id"]), row["study_uid"], int(row["version"]), str(row["state"]), records)

    def mark_exported(self, job_ids: Sequence[int], offset: int) -> None:
        with self.tx() as c:
            c.executemany("UPDATE jobs SET exported=1 WHERE id=?", [(i,) for i in job_ids])
            c.execute(_SET_OFFSET, (str(offset),))

    def mark_all_exported(self, offset: int) -> None:
        """After rebuilding results.jsonl (``offset`` bytes) from every finished version."""
        with self.tx() as c:
            c.execute("UPDATE jobs SET exported=1 WHERE state IN ('done', 'failed', 'quarantined')")
            c.execute(_SET_OFFSET, (str(offset),))

    # --- file operations after the commit ---------------------------------------------------------------

    def pending_ops(self) -> list[FileOp]:
        rows = self._query(
            "SELECT id, pending_op, path, origin, study_uid, sop_uid, error FROM files"
            " WHERE pending_op IS NOT NULL ORDER BY id"
        )
        return [
            FileOp(
                int(r["id"]),
                str(r["pending_op"]),
                fs_path(str(r["path"])),
                fs_path(str(r["origin"])),
                r["study_uid"],
                r["sop_uid"],
                json.loads(r["error"]) if r["error"] else None,
            )
            for r in rows
        ]

    def op_done(self, file_id: int, state: str, path: str | None = None) -> None:
        with self.tx() as c:
            c.execute(
                "UPDATE files SET state=?, path=coalesce(?, path), pending_op=NULL WHERE id=?",
                (state, None if path is None else stored_path(path), file_id),
            )
