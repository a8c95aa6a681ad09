"""The worker: queued study versions → the cascade → commits.

The worker thread feeds the cascade engine, :meth:`triage.cascade.predict.Predictor.stream` (the same
one ``triage predict`` runs), with a lazy iterator that claims queued versions from the store (a few per
transaction) only when the pipeline has room, so decoding, inference and writing overlap across studies,
with bounded memory. Records come back per
image; when a version has all of its records, how it ends is decided:

- any image failed transiently (write failed — e.g. disk full —, unreadable, inference failed, internal)
  → the whole version is re-queued with back-off (outputs are deterministic, a re-run replaces them),
  or marked ``failed`` after the last attempt, its files left in place;
- otherwise images that failed permanently are quarantined; the version is ``done`` if any image
  succeeded, else ``quarantined``. Outputs to forward and on-positive actions are recorded with it, and
  the input files are kept, moved or deleted as configured.

The versions decided since the last commit are committed together in one transaction
(:meth:`JobStore.commit`) before the next claim and when the stream ends — a few fsyncs per batch of
studies instead of per study. After the commit: results.jsonl is appended, file operations run, the
forwarder and action runner are woken, the worklist is marked for refresh. On shutdown the iterator
stops claiming (versions claimed but not started go back to the queue); the stream finishes the versions
it holds and they are committed before the thread ends. A kill -9 instead leaves them ``running``; they
are re-queued at the next start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom

from serving.config import ServiceConfig
from serving.database import fs_path
from serving.fileops import FileOps
from serving.loop import Loop
from serving.metrics import Metrics
from serving.policy import backoff, classify
from serving.results import ResultsLog, Worklist
from serving.store import Claim, ClaimedImage, JobStore, OutboxItem, Outcome
from triage.cascade.predict import Predictor
from triage.errors import ErrorCode
from triage.outputs.records import ResultRecord

logger = logging.getLogger(__name__)


@dataclass
class _Progress:
    claim: Claim
    records: dict[str, tuple[ClaimedImage, dict[str, Any]]] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return len(self.records) == len(self.claim.images)


def study_summary(claim: Claim, records: list[dict[str, Any]], bundle: str) -> dict[str, Any]:
    """The study-level record handed to on-positive actions (no patient attributes)."""
    ok = [r for r in records if r.get("status") == "ok"]
    probabilities = [float(r["probability"]) for r in ok if r.get("probability") is not None]
    priorities = [float(r["priority"]) for r in ok if r.get("priority") is not None]
    return {
        "study_uid": claim.study_uid,
        "version": claim.version,
        "job": claim.job_id,
        "bundle": bundle,
        "positive": any(bool(r.get("positive")) for r in ok),
        "max_probability": max(probabilities) if probabilities else None,
        "priority": max(priorities) if priorities else None,
        "images": len(ok),
        "errors": len(records) - len(ok),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "records": records,
    }


class Worker(Loop):
    """Runs the cascade on queued versions in its own thread; see the module docstring."""

    def __init__(
        self,
        config: ServiceConfig,
        store: JobStore,
        predictor: Predictor,
        metrics: Metrics,
        results: ResultsLog,
        worklist: Worklist,
        fileops: FileOps,
        dispose_roots: tuple[Path, ...],
        after_commit: Callable[[], None],
    ) -> None:
        super().__init__("worker")
        self.config = config
        self.store = store
        self.predictor = predictor
        self.metrics = metrics
        self.results = results
        self.worklist = worklist
        self.fileops = fileops
        self.dispose_roots = tuple(r.resolve() for r in dispose_roots)
        self.after_commit = after_commit
        self.busy = False
        self.disk_low = False
        self._inflight: dict[int, _Progress] = {}
        self._finished: list[tuple[Claim, Outcome]] = []  # decided, not yet committed
        self._retries: list[tuple[Claim, tuple[str, str, float]]] = []
        self.error: BaseException | None = None

    # --- thread (`stop`: claim nothing more; versions already taken are finished and committed) -------

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._disk_ok():
                    self._stop.wait(2.0)
                    continue
                self.wake.clear()
                self.busy = True
                try:
                    self.predictor.stream(self._inputs(), self.config.out, self._on_record)
                finally:
                    self._commit_pending()
                    self.busy = False
                self.wake.wait(1.0)
        except BaseException as exc:  # the health check reports a dead worker; the log says why
            self.error = exc
            logger.critical("worker stopped: %s", exc, exc_info=True, extra={"event": "worker_died"})
            raise

    def _disk_ok(self) -> bool:
        try:
            free = shutil.disk_usage(self.config.out).free
        except OSError:
            free = 0
        low = free < self.config.min_free_mb * 1024 * 1024
        if low != self.disk_low:
            self.disk_low = low
            if low:
                logger.error(
                    "only %.0f MB free in %s (minimum %.0f MB): not starting studies until space is freed",
                    free / 2**20,
                    self.config.out,
                    self.config.min_free_mb,
                    extra={"event": "disk_low"},
                )
            else:
                logger.info("disk space is back: processing resumes", extra={"event": "disk_ok"})
        return not low

    # --- feeding the stream ----------------------------------------------------------------------------

    def _inputs(self) -> Iterator[tuple[tuple[int, ClaimedImage], str]]:
        """Files of queued versions, claimed a few at a time as the pipeline asks for more. Versions
        finished since the last call are committed first (one transaction for all of them)."""
        claims: deque[Claim] = deque()
        try:
            while not self._stop.is_set():
                self._commit_pending()
                if not claims:
                    busy = {p.claim.study_uid for p in self._inflight.values()} | self._uncommitted_studies()
                    claims.extend(
                        self.store.claim_many(time.time(), busy, limit=self.predictor.options.batch_size)
                    )
                    if not claims:
                        return
                claim = claims.popleft()
                progress = _Progress(claim)
                self._inflight[claim.job_id] = progress
                logger.info(
                    "study version %d started (%d images, attempt %d)",
                    claim.version,
                    len(claim.images),
                    claim.attempts,
                    extra={"event": "study_started", "study_uid": claim.study_uid, "job": claim.job_id},
                )
                for image in claim.images:
                    if image.path is None:
                        progress.records[image.sop_uid] = (image, image.carried or _gone(claim, image))
                if progress.complete:
                    self._finish(progress)
                    continue
                for image in claim.images:
                    if image.path is not None:
                        yield (claim.job_id, image), image.path
        finally:
            if claims:  # claimed but never started (stopping): back to the queue
                self.store.unclaim([c.job_id for c in claims])

    def _on_record(self, key: tuple[int, ClaimedImage], record: ResultRecord) -> None:
        job_id, image = key
        progress = self._inflight[job_id]
        progress.records[image.sop_uid] = (image, _as_dict(record))
        if progress.complete:
            self._finish(progress)

    # --- the commit ------------------------------------------------------------------------------------

    def _uncommitted_studies(self) -> set[str]:
        return {c.study_uid for c, _ in self._finished} | {c.study_uid for c, _ in self._retries}

    def _finish(self, progress: _Progress) -> None:
        """Decide how a version ends (committed with the others finished meanwhile by _commit_pending)."""
        claim = progress.claim
        self._inflight.pop(claim.job_id, None)
        pairs = [progress.records[i.sop_uid] for i in claim.images]
        records = [r for _, r in pairs]
        transient = [
            r for r in records if r.get("status") == "error" and classify(r.get("error_code")) == "transient"
        ]
        for r in records:
            if r.get("status") == "error" and r.get("error_code"):
                self.metrics.failures.labels(code=str(r["error_code"])).inc()
            self.metrics.images.labels(status=str(r.get("status"))).inc()
        if transient and claim.attempts < self.config.max_attempts:
            code, message = str(transient[0]["error_code"]), str(transient[0].get("message") or "")
            delay = backoff(claim.attempts, self.config.retry_base, self.config.retry_max)
            self._retries.append((claim, (code, message, time.time() + delay)))
            self.metrics.retries.labels(code=code).inc()
            logger.warning(
                "study version %d: %s on %d image(s); retry %d of %d in %.0f s",
                claim.version,
                code,
                len(transient),
                claim.attempts,
                self.config.max_attempts - 1,
                delay,
                extra={
                    "event": "study_retry",
                    "study_uid": claim.study_uid,
                    "job": claim.job_id,
                    "code": code,
                },
            )
            return
        self._finished.append((claim, self._outcome(claim, pairs, transient)))

    def _commit_pending(self) -> None:
        """Commit every version decided since the last commit in one transaction, then act on it:
        results.jsonl, file operations, metrics, log lines, worklist, forwarding and actions."""
        if not self._finished and not self._retries:
            return
        finished, self._finished = self._finished, []
        retries, self._retries = self._retries, []
        self.store.commit(
            [(claim.job_id, outcome) for claim, outcome in finished],
            [(claim.job_id, code, message, not_before) for claim, (code, message, not_before) in retries],
        )
        now = time.time()
        for claim, outcome in finished:
            self.metrics.finished.labels(state=outcome.state).inc()
            self.metrics.processing.observe(max(0.0, now - claim.started_at))
            self.metrics.arrival_to_result.observe(max(0.0, now - claim.first_arrival))
            log = logger.warning if outcome.state != "done" else logger.info
            log(
                "study version %d %s: %d images, positive=%s",
                claim.version,
                outcome.state,
                len(outcome.records),
                outcome.positive,
                extra={
                    "event": f"study_{outcome.state}",
                    "study_uid": claim.study_uid,
                    "job": claim.job_id,
                    "code": outcome.error_code,
                    "seconds": round(now - claim.started_at, 3),
                    "arrival_to_result_s": round(now - claim.first_arrival, 3),
                },
            )
        if finished:
            self.results.export()
            self.fileops.run_pending()
            self.worklist.mark()
            self.after_commit()

    def _outcome(
        self, claim: Claim, pairs: list[tuple[ClaimedImage, dict[str, Any]]], transient: list[dict[str, Any]]
    ) -> Outcome:
        records = [r for _, r in pairs]
        ok = [r for r in records if r.get("status") == "ok"]
        if transient:  # out of attempts: failed, files stay where they are for a re-queue
            first = transient[0]
            return Outcome(
                "failed",
                records,
                str(first["error_code"]),
                f"after {claim.attempts} attempts: {first.get('message')}",
                positive=False,
            )
        file_ops: list[tuple[int, str, dict[str, Any] | None]] = []
        for image, record in pairs:
            processed = image.path is not None
            if (
                processed
                and record.get("status") == "error"
                and classify(record.get("error_code")) == "permanent"
            ):
                file_ops.append((image.file_id, "quarantine", record))
        quarantined = {f for f, _, _ in file_ops}
        policy = self.config.inputs
        if policy != "keep":
            for row in self.store.disposable_files(claim.job_id):
                if int(row["id"]) not in quarantined and self._disposable(fs_path(str(row["path"]))):
                    file_ops.append((int(row["id"]), policy, None))
        state = "done" if ok else "quarantined"
        positive = any(bool(r.get("positive")) for r in ok)
        priorities = [float(r["priority"]) for r in ok if r.get("priority") is not None]
        errors = [r for r in records if r.get("status") == "error"]
        outcome = Outcome(
            state,
            records,
            error_code=str(errors[0]["error_code"]) if errors else None,
            message=str(errors[0].get("message")) if errors else None,
            positive=positive,
            priority=max(priorities) if priorities else None,
            file_ops=file_ops,
        )
        if self.config.forwarding:
            outcome.outbox = self._outbox(ok)
        if positive and state == "done":
            payload = json.dumps(study_summary(claim, records, self.predictor.bundle.label))
            outcome.actions.extend((kind, target, payload) for kind, target in self.config.positive_actions())
        return outcome

    def dispose_redundant(self, study_uid: str) -> None:
        """Re-sent copies of already processed images: keep, move or delete them like the originals."""
        if self.config.inputs == "keep":
            return
        rows = self.store.redundant_files(study_uid)
        ops = [(int(r["id"]), self.config.inputs) for r in rows if self._disposable(fs_path(str(r["path"])))]
        if ops:
            logger.info(
                "%d re-sent image(s) of an already processed study",
                len(ops),
                extra={"event": "duplicates", "study_uid": study_uid},
            )
            self.store.set_ops(ops)
            self.fileops.run_pending()

    def _disposable(self, path: str) -> bool:
        try:
            resolved = Path(path).resolve()
        except OSError:
            return False
        return any(resolved.is_relative_to(root) for root in self.dispose_roots)

    def _outbox(self, ok: list[dict[str, Any]]) -> list[OutboxItem]:
        items = []
        for record in ok:
            for kind in sorted(self.config.forward_kinds):
                rel = (record.get("outputs") or {}).get(kind)
                if not rel:
                    continue
                path = self.config.out / rel
                data = path.read_bytes()
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                items.append(
                    OutboxItem(
                        kind,
                        rel,
                        str(ds.SOPInstanceUID),
                        str(ds.SOPClassUID),
                        hashlib.sha256(data).hexdigest(),
                    )
                )
        return items


def _as_dict(record: ResultRecord) -> dict[str, Any]:
    return dict(json.loads(record.to_json()))


def _gone(claim: Claim, image: ClaimedImage) -> dict[str, Any]:
    return {
        "input": None,
        "status": "error",
        "error_code": ErrorCode.NOT_FOUND.value,
        "message": "the file was removed before this version of its study was processed",
        "study_uid": claim.study_uid,
        "sop_uid": image.sop_uid,
    }
