"""What the admin commands and the poller read from the job store, and its standing notes.

:class:`StoreViews` is the read side of :class:`serving.store.JobStore` (which inherits it): SOPs already
taken in, outbox counts, delivery errors, and the per-source notes (``poll`` → "QIDO-RS: HTTP 503 …")
that `triage jobs` shows. Same connection, lock and transactions as the store (:class:`Database`).
"""

from __future__ import annotations

import sqlite3
import time

from serving.database import Database


class StoreViews(Database):
    """Queries and notes over the store's tables; see the module docstring."""

    def known_sops(self, study_uid: str) -> set[str]:
        """SOPInstanceUIDs of ``study_uid`` already taken in (any file, any version)."""
        rows = self._query("SELECT sop_uid FROM images WHERE study_uid=?", (study_uid,))
        return {str(r["sop_uid"]) for r in rows}

    def outbox_counts(self) -> dict[tuple[str, str], int]:
        """Outbox rows by (destination, state)."""
        rows = self._query("SELECT dest, state, count(*) FROM outbox GROUP BY dest, state")
        return {(str(r[0]), str(r[1])): int(r[2]) for r in rows}

    def delivery_errors(self, limit: int = 20) -> list[sqlite3.Row]:
        """The latest outbox and action rows with an error (pending retries and given-up ones):
        (what, dest/kind, state, attempts, study, last_error)."""
        return self._query(
            "SELECT * FROM ("
            " SELECT 'outbox' AS what, dest AS target, state, attempts, study_uid, last_error, id"
            " FROM outbox WHERE last_error IS NOT NULL AND state != 'delivered'"
            " UNION ALL"
            " SELECT 'action' AS what, kind AS target, state, attempts, study_uid, last_error, id"
            " FROM actions WHERE last_error IS NOT NULL AND state != 'done'"
            ") ORDER BY id DESC LIMIT ?",
            (limit,),
        )

    def set_note(self, key: str, text: str | None) -> None:
        """A source's standing problem (e.g. ``poll`` → "QIDO-RS: HTTP 503 …"), shown by `triage jobs`;
        None clears it."""
        with self.tx() as c:
            if text is None:
                c.execute("DELETE FROM meta WHERE key=?", (f"note:{key}",))
            else:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
                c.execute(
                    "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                    (f"note:{key}", f"{stamp} {text}"),
                )

    def notes(self) -> dict[str, str]:
        rows = self._query("SELECT key, value FROM meta WHERE key LIKE 'note:%' ORDER BY key")
        return {str(r["key"])[5:]: str(r["value"]) for r in rows}
