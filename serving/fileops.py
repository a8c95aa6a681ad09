"""What happens to input files after the commit that decided it: move, delete or quarantine.

Each operation is idempotent, so a crash half-way is finished at the next start-up (the store keeps
the ``pending_op`` until :meth:`JobStore.op_done`):

- ``move``: to ``OUT/processed/<StudyInstanceUID>/<SOPInstanceUID>.dcm`` (validated UIDs only);
- ``delete``: the file is removed;
- ``quarantine``: the error record is written to ``OUT/quarantine/<YYYYMMDD>/<id>-<name>.error.json``
  first, then the file is moved beside it as ``<id>-<name>``; when it cannot be moved (a read-only
  share) it is copied and left where it was (it is known to the store and not taken in again).

Empty folders left behind inside the watched folder (or the spool) are removed, never the root itself.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
from pathlib import Path

from serving.store import FileOp, JobStore
from triage.errors import TriageError
from triage.outputs.atomic import atomic_write_bytes
from triage.outputs.paths import validated_uid

logger = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
TEMP_PATTERN = ".*.tmp"  # triage.outputs.atomic's temporary files


def safe_name(name: str, limit: int = 80) -> str:
    """``name`` reduced to letters, digits, dot, dash and underscore (no leading dot), at most ``limit``."""
    cleaned = _UNSAFE.sub("_", name).lstrip(".") or "file"
    return cleaned[-limit:]


def _move(src: Path, dest: Path) -> None:
    """Move ``src`` to ``dest`` atomically (rename; across file systems: copy to a temp name beside
    ``dest``, fsync, rename, then unlink ``src``)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dest)
        return
    except OSError as exc:
        if exc.errno != 18:  # EXDEV: another file system
            raise
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.copy2(src, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, dest)
    src.unlink()


class FileOps:
    """Carries out the store's pending file operations for one service."""

    def __init__(self, store: JobStore, out: Path, roots: tuple[Path, ...]) -> None:
        self.store = store
        self.out = Path(out)
        self.roots = tuple(Path(r).resolve() for r in roots)
        self._lock = threading.Lock()

    def run_pending(self) -> int:
        """Carry out every pending operation (one thread at a time); returns how many succeeded."""
        with self._lock:
            return self._run_pending()

    def _run_pending(self) -> int:
        done = 0
        for op in self.store.pending_ops():
            try:
                self._apply(op)
                done += 1
            except OSError as exc:
                logger.error(
                    "could not %s %s: %s",
                    op.op,
                    op.path,
                    exc.strerror or exc,
                    extra={"event": "file_op_failed", "op": op.op, "file_id": op.file_id},
                )
        return done

    def _apply(self, op: FileOp) -> None:
        src = Path(op.path)
        if op.op == "delete":
            src.unlink(missing_ok=True)
            self.store.op_done(op.file_id, "deleted")
            self._prune(src.parent)
        elif op.op == "move":
            dest = self._processed_path(op)
            if src.exists():
                _move(src, dest)
                self._prune(src.parent)
            elif not dest.exists():
                logger.warning("%s vanished before it could be moved", src, extra={"event": "file_gone"})
                self.store.op_done(op.file_id, "deleted")
                return
            self.store.op_done(op.file_id, "moved", str(dest))
        elif op.op == "quarantine":
            self._quarantine(op, src)
        else:
            raise ValueError(f"unknown file op {op.op!r}")

    def _processed_path(self, op: FileOp) -> Path:
        try:
            study = validated_uid(op.study_uid or "", "StudyInstanceUID")
            sop = validated_uid(op.sop_uid or "", "SOPInstanceUID")
            return self.out / "processed" / study / f"{sop}.dcm"
        except TriageError:
            return self.out / "processed" / "unknown" / f"{op.file_id}-{safe_name(Path(op.origin).name)}"

    def _quarantine(self, op: FileOp, src: Path) -> None:
        day = time.strftime("%Y%m%d")
        existing = sorted((self.out / "quarantine").glob(f"*/{op.file_id}-*.error.json"))
        if existing:  # a crash after the error record was written: finish that one
            note = existing[0]
            dest = note.with_name(note.name.removesuffix(".error.json"))
        else:
            dest = self.out / "quarantine" / day / f"{op.file_id}-{safe_name(Path(op.origin).name)}"
            note = dest.with_name(dest.name + ".error.json")
        record = {
            "file": op.origin,
            "quarantined_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "study_uid": op.study_uid,
            "sop_uid": op.sop_uid,
            **(op.error or {}),
        }
        atomic_write_bytes(note, (json.dumps(record, indent=2) + "\n").encode())
        if src.exists() and src.resolve() != dest.resolve():
            try:
                _move(src, dest)
                self._prune(src.parent)
            except PermissionError:
                shutil.copy2(src, dest)
                logger.warning(
                    "%s could not be moved to the quarantine (read-only?); copied, the original stays",
                    src,
                    extra={"event": "quarantine_copied"},
                )
        logger.warning(
            "quarantined %s: %s",
            op.origin,
            record.get("error_code"),
            extra={
                "event": "quarantined",
                "code": record.get("error_code"),
                "file_id": op.file_id,
                "quarantine": str(dest),
            },
        )
        self.store.op_done(op.file_id, "quarantined", str(dest))

    def _prune(self, folder: Path) -> None:
        """Remove empty folders from ``folder`` up to (not including) the root that holds it."""
        try:
            current = folder.resolve()
        except OSError:
            return
        root = next((r for r in self.roots if current != r and current.is_relative_to(r)), None)
        while root is not None and current != root and current.is_relative_to(root):
            try:
                current.rmdir()
            except OSError:
                return
            current = current.parent


def sweep_temporaries(folder: Path) -> int:
    """Remove temporary files of interrupted atomic writes (``.<name>.<random>.tmp``) under ``folder``."""
    removed = 0
    if folder.is_dir():
        for path in folder.rglob(TEMP_PATTERN):
            if path.is_file():
                path.unlink(missing_ok=True)
                removed += 1
    return removed
