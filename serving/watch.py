"""The folder source of `triage watch`: files appearing in a folder → complete files → the job store.

Events come from watchdog: inotify (``Observer``) on local disks, or ``PollingObserver`` (``--poll``)
on network shares, which send no events. Either way a file is only *pending* until it is complete:

- its size and mtime have not changed for the quiet period (checked by ``stat`` every tick), and
- with inotify, it is not open for writing: after a write event the file counts as being written
  until the writer closes it (IN_CLOSE_WRITE), however long it pauses — so a slowly growing file is
  never read early. (A writer that vanishes without a close event is given up on after
  ``max(300 s, 10 × quiet)``.) Polling cannot see open files: there the quiet period alone decides,
  so choose it longer than the longest pause of the slowest writer.

Files renamed into the folder (the atomic way: write elsewhere or under a hidden name, then rename) are
complete at once; hidden files (leading dot) and names ending in .tmp, .part, .partial, .filepart or
.crdownload are ignored until renamed. Only then is the header read (no pixel data), and the file is
registered in the store under its StudyInstanceUID / SOPInstanceUID; a file whose header cannot be read
is registered as an error and quarantined. A study is complete when no file of it has arrived or grown
for the quiet period; while other files in the same folder are still pending (likely the rest of the
study) its completion waits, at most one more quiet period.

At start-up, and every ``--rescan-seconds``, the folder is walked, so files that arrived while the
service was down (or whose events were lost) are taken in; files the store already knows (same path,
size and mtime) are skipped.
"""

from __future__ import annotations

import logging
import os
import queue
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from serving.config import WatchConfig
from serving.metrics import Metrics
from serving.store import Arrival, JobStore
from triage.errors import ErrorCode, TriageError
from triage.io.dicom import read_header
from triage.io.dicomfile import text_value
from triage.outputs.paths import validated_uid

logger = logging.getLogger(__name__)

IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".filepart", ".crdownload")
_UNREADABLE_RETRIES = 5


def ignored(path: Path) -> bool:
    """Hidden files and files still being staged under a temporary name are not inputs (yet)."""
    return (
        path.name.startswith(".") or path.name.lower().endswith(IGNORED_SUFFIXES) or path.name == "DICOMDIR"
    )


@dataclass
class _Pending:
    size: int
    mtime_ns: int
    changed: float  # monotonic time of the last change seen
    writing: bool = False
    unreadable: int = 0


class _Events(FileSystemEventHandler):
    """Hands watchdog events to the service's tick (runs in the observer thread: no work here)."""

    def __init__(self, sink: queue.SimpleQueue[tuple[str, str, str, bool]]) -> None:
        self.sink = sink

    def on_any_event(self, event: FileSystemEvent) -> None:
        self.sink.put(
            (
                event.event_type,
                os.fsdecode(event.src_path),
                os.fsdecode(event.dest_path or b""),
                event.is_directory,
            )
        )


def arrival_from_header(path: Path, size: int, mtime_ns: int, arrived_at: float) -> Arrival:
    """Read ``path``'s header (no pixels) into an :class:`Arrival`; unusable headers give an error one."""
    try:
        ds = read_header(path)
        study = validated_uid(text_value(ds, "StudyInstanceUID"), "StudyInstanceUID")
        sop = validated_uid(text_value(ds, "SOPInstanceUID"), "SOPInstanceUID")
        return Arrival(str(path), size, mtime_ns, arrived_at, study, sop)
    except TriageError as exc:
        error = {"input": str(path), "status": "error", "error_code": exc.code.value, "message": exc.message}
        return Arrival(str(path), size, mtime_ns, arrived_at, None, None, error)


def recover_spool(spool: Path, store: JobStore) -> None:
    """Register the ``.dcm`` files under a receiver's ``spool`` that a crash left written but unregistered
    (registering is idempotent): the listener's and the DICOMweb poller's start-up step."""
    if not spool.is_dir():
        return
    for base, _dirs, names in os.walk(spool):
        for name in names:
            path = Path(base) / name
            if name.startswith(".") or not name.endswith(".dcm"):
                continue
            st = path.stat()
            if not store.is_known(str(path), st.st_size, st.st_mtime_ns):
                store.register(arrival_from_header(path, st.st_size, st.st_mtime_ns, st.st_mtime))


class FolderSource:
    """Watches ``config.folder``; :meth:`tick` (called by the service's main loop) settles files."""

    name = "watch"

    def __init__(self, config: WatchConfig, store: JobStore, metrics: Metrics, quiet: float) -> None:
        self.config = config
        self.root = config.folder.resolve()
        self.store = store
        self.metrics = metrics
        self.quiet = quiet
        self.write_timeout = max(300.0, 10.0 * quiet)
        self.inotify = not config.poll
        self._events: queue.SimpleQueue[tuple[str, str, str, bool]] = queue.SimpleQueue()
        self._pending: dict[Path, _Pending] = {}
        self._observer: BaseObserver | None = None
        self._next_rescan = 0.0
        self._busy: set[Path] = set()

    # --- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> None:
        observer: BaseObserver = (
            PollingObserver(timeout=self.config.poll_interval) if self.config.poll else Observer()
        )
        observer.schedule(_Events(self._events), str(self.root), recursive=True)
        observer.start()  # before the scan: nothing that arrives meanwhile is missed
        self._observer = observer
        self.rescan()
        logger.info(
            "watching %s (%s, quiet period %.1f s)",
            self.root,
            f"polling every {self.config.poll_interval:g} s" if self.config.poll else "inotify",
            self.quiet,
            extra={"event": "watch_started"},
        )

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=10)

    def alive(self) -> bool:
        return self._observer is not None and self._observer.is_alive()

    def drained(self) -> bool:
        """Nothing pending (for --once)."""
        return not self._pending and self._events.empty()

    # --- the tick ------------------------------------------------------------------------------------------

    def tick(self) -> int:
        """Apply events, re-check pending files, register the complete ones; returns how many."""
        now = time.monotonic()
        while True:
            try:
                kind, src, dest, is_dir = self._events.get_nowait()
            except queue.Empty:
                break
            self._on_event(kind, Path(src), Path(dest) if dest else None, is_dir, now)
        if self.config.rescan_seconds and now >= self._next_rescan:
            self.rescan()
        settled = self._settle(now)
        self._busy = {p.parent for p in self._pending}
        return settled

    def _on_event(self, kind: str, src: Path, dest: Path | None, is_dir: bool, now: float) -> None:
        if is_dir:
            if kind in ("created", "moved") and (dest or src).is_dir():
                self._scan(dest or src, now)
            return
        if kind == "deleted":
            self._pending.pop(src, None)
        elif kind == "moved":
            self._pending.pop(src, None)
            if dest is not None:
                self._note(dest, now, writing=False)
        elif kind == "created":  # also synthesised for the files of a folder moved in: no writer implied
            self._note(src, now, writing=False)
        elif kind == "modified":  # IN_MODIFY: a writer has it open until IN_CLOSE_WRITE
            self._note(src, now, writing=self.inotify)
        elif kind == "closed":  # IN_CLOSE_WRITE: the writer is done
            self._note(src, now, writing=False, closed=True)

    def rescan(self) -> None:
        now = time.monotonic()
        self._scan(self.root, now)
        self._next_rescan = now + self.config.rescan_seconds

    def _scan(self, folder: Path, now: float) -> None:
        for base, dirs, names in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                path = Path(base) / name
                if path not in self._pending:
                    self._note(path, now, writing=False)

    def _note(self, path: Path, now: float, writing: bool, closed: bool = False) -> None:
        try:
            hidden_folder = any(part.startswith(".") for part in path.relative_to(self.root).parts[:-1])
        except ValueError:  # outside the watched folder
            return
        if hidden_folder or ignored(path):
            return
        try:
            st = path.stat()
        except OSError:
            self._pending.pop(path, None)
            return
        if not stat.S_ISREG(st.st_mode):
            return
        entry = self._pending.get(path)
        if entry is None:
            if self.store.is_known(str(path), st.st_size, st.st_mtime_ns):
                return
            self._pending[path] = _Pending(st.st_size, st.st_mtime_ns, now, writing)
            return
        if (st.st_size, st.st_mtime_ns) != (entry.size, entry.mtime_ns):
            entry.size, entry.mtime_ns, entry.changed = st.st_size, st.st_mtime_ns, now
        if closed:
            entry.writing = False
        elif writing:
            entry.writing = True
            entry.changed = now

    def _settle(self, now: float) -> int:
        arrivals: list[Arrival] = []
        for path, entry in list(self._pending.items()):
            try:
                st = path.stat()
            except OSError:
                del self._pending[path]
                continue
            if (st.st_size, st.st_mtime_ns) != (entry.size, entry.mtime_ns):
                entry.size, entry.mtime_ns, entry.changed = st.st_size, st.st_mtime_ns, now
                continue
            idle = now - entry.changed
            if idle < self.quiet or (entry.writing and idle < self.write_timeout):
                continue
            if entry.writing:
                logger.warning(
                    "%s: no close event after %.0f s; taking it as complete",
                    path,
                    idle,
                    extra={"event": "write_timeout"},
                )
            arrived_at = time.time() - idle
            arrival = arrival_from_header(path, entry.size, entry.mtime_ns, arrived_at)
            try:
                after = path.stat()
            except OSError:
                del self._pending[path]
                continue
            if (after.st_size, after.st_mtime_ns) != (entry.size, entry.mtime_ns):  # changed while read
                entry.size, entry.mtime_ns, entry.changed = after.st_size, after.st_mtime_ns, now
                continue
            code = (arrival.error or {}).get("error_code")
            if code == ErrorCode.NOT_FOUND.value:
                del self._pending[path]
                continue
            if code == ErrorCode.UNREADABLE.value and entry.unreadable < _UNREADABLE_RETRIES:
                entry.unreadable += 1
                entry.changed = now  # try again after another quiet period
                continue
            arrivals.append(arrival)
            del self._pending[path]
        if arrivals:  # one transaction for all the files that settled in this tick
            self.store.register_many(arrivals)
        for arrival in arrivals:
            self.metrics.received.labels(source=self.name).inc()
            code = (arrival.error or {}).get("error_code")
            if code:
                self.metrics.failures.labels(code=code).inc()
                logger.warning(
                    "%s cannot be read as DICOM: %s",
                    arrival.path,
                    code,
                    extra={"event": "file_unreadable", "code": code},
                )
        return len(arrivals)

    def hold(self, paths: list[str], last_arrival: float) -> bool:
        """Whether a study whose files are ``paths`` should wait: another file in one of their folders
        is still pending (probably more of the study), for at most one extra quiet period."""
        if time.time() - last_arrival >= 2 * self.quiet:
            return False
        return any(Path(p).parent in self._busy for p in paths)
