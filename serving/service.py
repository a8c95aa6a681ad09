"""One service process: a source (folder or DICOM listener) → job store → worker → outputs, forwarding,
actions, metrics. `triage watch` and `triage listen` differ only in the source.

Start-up (in this order): lock the output folder (one service per folder), load the bundle (refuse to
start if it is missing or damaged), open the store; re-queue versions left ``running`` by a crash;
remove temporary files of interrupted writes; bring results.jsonl in line with the store; finish
pending file operations; rewrite the worklist; then start the HTTP endpoint, the worker, the forwarder,
the action runner and the source. The main thread then ticks: the source settles files, received
studies whose quiet period has passed are queued, the worklist is refreshed.

SIGTERM / SIGINT: the source stops taking in (the listener aborts open associations — their
unanswered images are resent by the sender), the worker finishes and commits the studies it holds,
forwarding and actions stop after the current item, results and worklist are flushed, exit status 0.
A component thread that dies ends the process with status 1 (so systemd / docker restart it).
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import IO, Any, Protocol

from serving.actions import ActionRunner
from serving.config import ConfigError, ServiceConfig
from serving.fileops import FileOps, sweep_temporaries
from serving.forward import Forwarder
from serving.metrics import HttpEndpoint, Metrics
from serving.results import ResultsLog, Worklist
from serving.store import JobStore
from serving.stow import StowForwarder
from serving.worker import Worker
from triage import __version__
from triage.bundle import load_bundle
from triage.cascade.predict import PredictOptions, Predictor
from triage.errors import TriageError
from triage.io.dicom import ReadPolicy

logger = logging.getLogger(__name__)

LOCK_NAME = ".service.lock"


class Source(Protocol):
    name: str

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def alive(self) -> bool: ...
    def drained(self) -> bool: ...
    def tick(self) -> int: ...
    def hold(self, paths: list[str], last_arrival: float) -> bool: ...


SourceFactory = Callable[[JobStore, Metrics], Source]


class FolderLock:
    """An exclusive flock on ``OUT/.service.lock`` (released by the kernel if the process dies)."""

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / LOCK_NAME
        self._fh: IO[str] | None = None

    def __enter__(self) -> FolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise ConfigError(
                f"another triage service (pid {holder}) is using {self.path.parent}; one service per --out"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


class Service:
    """Runs until SIGTERM / SIGINT (or, with ``config.once``, until the queue is empty)."""

    def __init__(
        self, config: ServiceConfig, make_source: SourceFactory, dispose_roots: tuple[Path, ...]
    ) -> None:
        self.config = config
        self.make_source = make_source
        self.dispose_roots = dispose_roots
        self.stopping = threading.Event()
        self.started = time.monotonic()
        self.http_port: int | None = None

    def request_stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        if signum is not None:
            logger.info(
                "signal %s: stopping after the current studies",
                signal.Signals(signum).name,
                extra={"event": "stop_requested"},
            )
        self.stopping.set()

    def run(self) -> int:
        """Run the service; returns the exit status (0 stopped cleanly, 1 a component died).
        Raises ConfigError / TriageError / StoreError for problems found before it starts."""
        config = self.config
        config.out.mkdir(parents=True, exist_ok=True)
        with FolderLock(config.out):
            bundle = load_bundle(config.bundle)
            store = JobStore(config.db_path, bundle.content_hash)
            store.destinations = config.destinations
            try:
                return self._run(store, bundle)
            finally:
                store.close()

    def _run(self, store: JobStore, bundle: Any) -> int:
        config = self.config
        results = ResultsLog(config.out, store)
        if results.path.exists() and results.path.stat().st_size and store.results_offset() is None:
            raise ConfigError(
                f"{results.path} was not written by a triage service (triage predict?); choose another --out"
            )
        options = PredictOptions(
            formats=config.formats,
            batch_size=config.batch_size,
            policy=ReadPolicy(any_modality=config.any_modality, max_pixels=config.max_pixels),
            device=config.device,  # type: ignore[arg-type]
            threads=config.threads,
            read_workers=config.read_workers,
            write_workers=config.write_workers,
        )
        predictor = Predictor(bundle, options)
        metrics = Metrics(store, config.out)
        worklist = Worklist(config.out, store, config.worklist_hours)
        fileops = FileOps(store, config.out, self.dispose_roots)
        self._recover(store, results, fileops, worklist)

        forwarder = Forwarder(config, store, metrics) if config.forward else None
        stow = StowForwarder(config, store, metrics) if config.forward_stow else None
        actions = ActionRunner(config, store) if config.positive_actions() else None

        def after_commit() -> None:
            for part in (forwarder, stow, actions):
                if part is not None:
                    part.wake.set()

        worker = Worker(
            config, store, predictor, metrics, results, worklist, fileops, self.dispose_roots, after_commit
        )
        source = self.make_source(store, metrics)
        parts: dict[str, Any] = {"worker": worker, source.name: source}
        if forwarder:
            parts["forwarder"] = forwarder
        if stow:
            parts["stow"] = stow
        if actions:
            parts["actions"] = actions

        def health() -> dict[str, Any]:
            alive = {name: bool(part.alive()) for name, part in parts.items()}
            degraded = []
            if worker.disk_low:
                degraded.append("disk space below --min-free-mb: not processing")
            if forwarder is not None and forwarder.reachable is False:
                degraded.append(f"PACS {config.forward} unreachable: results wait in the outbox")
            if stow is not None and stow.reachable is False:
                degraded.append("STOW-RS destination failing: results wait in the outbox")
            status = "unhealthy" if not all(alive.values()) else ("degraded" if degraded else "ok")
            counts = store.counts("jobs")
            return {
                "status": status,
                "components": alive,
                "degraded": degraded,
                "queue_depth": counts.get("queued", 0) + counts.get("running", 0),
                "bundle": bundle.label,
                "version": __version__,
                "uptime_s": round(time.monotonic() - self.started, 1),
            }

        http = None
        if config.http_port:
            try:
                http = HttpEndpoint(config.http_host, config.http_port, metrics, health)
            except OSError as exc:
                raise ConfigError(
                    f"cannot serve /metrics on {config.http_host}:{config.http_port}: {exc.strerror}"
                    " (choose another --http-port, or 0 to turn it off)"
                ) from exc
            http.start()
            self.http_port = http.port
        previous = {}
        if threading.current_thread() is threading.main_thread():  # embedded in a thread: call request_stop
            previous = {sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        status = 0
        try:
            worker.start()
            for part in (forwarder, stow, actions):
                if part is not None:
                    part.start()
            source.start()
            logger.info(
                "service started: bundle %s, output %s, metrics %s",
                bundle.label,
                config.out,
                f"http://{config.http_host}:{self.http_port}/metrics" if http else "off",
                extra={"event": "service_started", "pid": os.getpid()},
            )
            status = self._loop(store, source, worker, worklist, parts)
        finally:
            self._shutdown(source, worker, (forwarder, stow, actions), results, fileops, worklist)
            if http is not None:
                http.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return status

    def _recover(self, store: JobStore, results: ResultsLog, fileops: FileOps, worklist: Worklist) -> None:
        requeued, failed = store.recover_running(self.config.max_attempts)
        if requeued or failed:
            logger.warning(
                "start-up: %d interrupted study version(s) re-queued, %d failed after too many interruptions",
                requeued,
                failed,
                extra={"event": "recovered", "requeued": requeued, "failed": failed},
            )
        swept = sum(sweep_temporaries(self.config.out / sub) for sub in ("studies", "spool", "processed"))
        if swept:
            logger.info(
                "start-up: removed %d temporary file(s) of interrupted writes",
                swept,
                extra={"event": "temporaries_removed"},
            )
        results.reconcile()
        fileops.run_pending()
        worklist.refresh(force=True)

    def _loop(
        self, store: JobStore, source: Source, worker: Worker, worklist: Worklist, parts: dict[str, Any]
    ) -> int:
        quiet = self.config.quiet_seconds
        interval = min(0.5, max(0.05, quiet / 4))
        while not self.stopping.is_set():
            source.tick()
            received = store.received_due(time.time(), quiet)
            due = [
                (job, study)
                for job, study, last_arrival, paths in received
                if not source.hold(paths, last_arrival)
            ]
            if due:
                queued = set(store.queue_many([job_id for job_id, _ in due]))
                if queued:
                    worker.wake.set()
                for job_id, study in due:
                    if job_id not in queued:  # re-sent images of a study already processed
                        worker.dispose_redundant(study)
            worklist.refresh()
            dead = [name for name, part in parts.items() if not part.alive()]
            if dead:
                logger.critical(
                    "component(s) stopped: %s; exiting so that the service is restarted",
                    ", ".join(dead),
                    extra={"event": "component_died"},
                )
                return 1
            if self.config.once and self._finished(store, source, worker):
                logger.info("--once: nothing left to do", extra={"event": "once_done"})
                return 0
            self.stopping.wait(interval)
        return 0

    def _finished(self, store: JobStore, source: Source, worker: Worker) -> bool:
        return (
            source.drained()
            and store.idle()
            and not worker.busy
            and store.untried("outbox") == 0
            and store.untried("actions") == 0
        )

    def _shutdown(
        self,
        source: Source,
        worker: Worker,
        senders: tuple[Forwarder | StowForwarder | ActionRunner | None, ...],
        results: ResultsLog,
        fileops: FileOps,
        worklist: Worklist,
    ) -> None:
        logger.info("stopping", extra={"event": "stopping"})
        try:
            source.stop()
        finally:
            worker.stop()
            worker.join()
            for part in senders:
                if part is not None:
                    part.stop()
            for part in senders:
                if part is not None:
                    part.join(timeout=60)
            results.export()
            fileops.run_pending()
            worklist.refresh(force=True)
            logger.info("stopped", extra={"event": "stopped"})


def fatal_message(exc: BaseException) -> str:
    """One line for an error that keeps the service from starting."""
    if isinstance(exc, TriageError):
        return f"{exc.code.value}: {exc.message}"
    return str(exc)
