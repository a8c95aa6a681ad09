"""`triage jobs OUT`: what the service has done and could not do, read from its job store (safe while
the service runs: SQLite WAL allows a reader beside the writer)."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from serving.store import JOB_STATES, JobStore


def _when(ts: float | None) -> str:
    return "" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def show_jobs(db: Path, show: int, requeue_failed: bool) -> int:
    store = JobStore(db, bundle_hash="")
    console = Console()
    try:
        if requeue_failed:
            n = store.requeue_failed()
            console.print(f"re-queued {n} failed study version(s); a running service picks them up")
        counts = store.counts("jobs")
        table = Table(title=f"study versions in {db}")
        table.add_column("state")
        table.add_column("count", justify="right")
        for state in JOB_STATES:
            table.add_row(state, str(counts.get(state, 0)))
        table.add_row("unreadable files (no study)", str(store.unattributed_quarantined()))
        for (dest, state), n in sorted(store.outbox_counts().items()):
            table.add_row(f"outbox {dest}: {state}", str(n))
        for state, n in sorted(store.counts("actions").items()):
            table.add_row(f"actions: {state}", str(n))
        console.print(table)
        for source, note in store.notes().items():
            console.print(f"{source}: {note}")
        errors = store.delivery_errors(show)
        if errors:
            failing = Table(title="forwarding / notification errors (latest first)")
            for column in ("what", "to", "state", "attempts", "study", "last error"):
                failing.add_column(column)
            for row in errors:
                failing.add_row(
                    row["what"],
                    row["target"],
                    row["state"],
                    str(row["attempts"]),
                    row["study_uid"],
                    (row["last_error"] or "")[:100],
                )
            console.print(failing)
        rows = store.jobs(("failed", "quarantined"), limit=show)
        if rows:
            bad = Table(title=f"latest {len(rows)} failed / quarantined")
            for column in ("job", "state", "finished", "study", "version", "code", "message"):
                bad.add_column(column)
            for row in rows:
                bad.add_row(
                    str(row["id"]),
                    row["state"],
                    _when(row["finished_at"]),
                    row["study_uid"] or "-",
                    str(row["version"]),
                    row["error_code"] or "",
                    (row["message"] or "")[:80],
                )
            console.print(bad)
    finally:
        store.close()
    return 0
