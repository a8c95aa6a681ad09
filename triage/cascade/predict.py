"""The cascade engine (:meth:`Predictor.stream`) and the batch command on top of it (:meth:`Predictor.run`,
``triage predict``).

One engine for every caller: ``triage predict`` and the serving worker (``triage watch`` / ``triage listen``,
``serving/worker.py``) both feed :meth:`Predictor.stream` with (key, path) pairs, and so should any new
caller (a scheduler's shard, an actor in a cluster), so that a speed change lands once.

Readers (a thread pool) decode and preprocess ahead of the models; the calling thread batches images
across studies for the classifier, runs the segmenter (and the saliency model) only on the images the
gate passes, and hands each image to a writer pool; each record is reported as soon as its outputs are
written (in input order; a file that cannot be read is reported at once). The thread counts and the
queue depths are one plan (:func:`triage.cascade.options.thread_plan`), so memory is bounded by
``read_ahead + batch_size + pending_writes`` images, each holding only the pixels its outputs need
(``pixels_to_keep``).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from triage.bundle import Bundle
from triage.cascade.batch import BatchRecorder, Summary, plan_batch
from triage.cascade.infer import infer_isolated
from triage.cascade.items import Item, Keep, claim_instance, duplicate_error, load_item, pixels_to_keep
from triage.cascade.models import CascadeModels
from triage.cascade.options import PredictOptions, ThreadPlan, thread_plan
from triage.cascade.write import error_record, finish_item
from triage.io.dicom import ReadPolicy
from triage.io.manifest import Shard
from triage.memory import fix_mmap_threshold
from triage.outputs.records import ResultRecord

__all__ = ["PredictOptions", "Predictor", "StreamSummary", "Summary", "ThreadPlan", "predict", "thread_plan"]

K = TypeVar("K")


@dataclass(frozen=True)
class StreamSummary:
    """What one :meth:`Predictor.stream` call did: records reported, of which errors, and seconds."""

    records: int
    failed: int
    seconds: float


def _read_ahead(
    inputs: Iterable[tuple[K, str]],
    bundle: Bundle,
    policy: ReadPolicy,
    keep: Keep,
    pool: ThreadPoolExecutor,
    depth: int,
) -> Iterator[tuple[K, Item]]:
    """(key, item) in input order, with at most ``depth`` inputs read or waiting; ``inputs`` is pulled
    (in the calling thread) only to refill that depth."""
    pending: deque[tuple[K, Future[Item]]] = deque()
    source = iter(inputs)

    def submit() -> bool:
        nxt = next(source, None)
        if nxt is None:
            return False
        key, path = nxt
        pending.append((key, pool.submit(load_item, path, bundle, policy, keep)))
        return True

    while len(pending) < depth and submit():
        pass
    while pending:
        key, future = pending.popleft()
        item = future.result()
        submit()
        yield key, item


class Predictor:
    """The bundle's models, loaded once, and the cascade engine that runs them (:meth:`stream`).

    ``triage predict`` makes one and calls :meth:`run` once. A long-running service (the folder watcher,
    the DICOM listener) keeps one for its lifetime and calls :meth:`stream` with a lazy iterator over its
    job queue each time work arrives, so models are loaded and optimised only at start-up.
    """

    def __init__(self, bundle: Bundle, options: PredictOptions, models: CascadeModels | None = None) -> None:
        fix_mmap_threshold()  # flat memory over thousands of studies (triage/memory.py)
        self.bundle = bundle
        self.options = options
        self.plan = thread_plan(options)
        self.models = models or CascadeModels(
            bundle, options.device, self.plan.inference, variant=options.variant
        )

    def stream(
        self,
        inputs: Iterable[tuple[K, str]],
        out: Path,
        on_record: Callable[[K, ResultRecord], None],
        *,
        distinct: bool = False,
    ) -> StreamSummary:
        """Run the cascade over ``inputs``, (key, file path) pairs, writing each image's outputs under
        ``out`` (``studies/<study UID>/…``: atomic, deterministic names and UIDs, so a re-run replaces).

        Every input yields exactly one :class:`ResultRecord` (an error record for a file that cannot be
        used), passed to ``on_record(key, record)`` in the calling thread as soon as its outputs are
        written; records come in input order, except that a file that fails to read is reported as soon
        as the read fails, before the good files still in the pipeline. ``key`` is any value the caller
        uses to match records to its own work (a path, a job, a row of a manifest).

        ``inputs`` is consumed lazily, in the calling thread, only as the pipeline has room: at most
        ``plan.in_flight(batch_size)`` inputs are pulled and not yet reported, so a service can claim work
        from its queue as it goes (and stop claiming on shutdown: the stream then finishes what it took
        and returns). Nothing is written under ``out`` besides the per-image outputs; ``options.resume``
        does not apply (see :meth:`run`). If ``on_record`` raises, the stream stops after the images in
        flight are written, and the exception propagates.

        ``distinct``: outputs are named by SOPInstanceUID in the study's folder, so a second input with the
        (StudyInstanceUID, SOPInstanceUID) of an earlier one would overwrite its outputs; with ``distinct``
        it gets a ``duplicate_instance`` error record instead and writes nothing. A batch asks for it; the
        services do not (their store holds one file per instance and version, and a later version of a
        study processes its instances again on purpose).
        """
        start = time.perf_counter()
        options, plan, bundle = self.options, self.plan, self.bundle
        count = failed = 0
        taken: set[tuple[str, str]] = set()  # (study, SOP) of the inputs accepted, with ``distinct``
        with (
            ThreadPoolExecutor(plan.readers, thread_name_prefix="read") as readers,
            ThreadPoolExecutor(plan.writers, thread_name_prefix="write") as writers,
        ):
            writing: deque[tuple[K, Future[ResultRecord]]] = deque()
            batch: list[tuple[K, Item]] = []

            def emit(key: K, record: ResultRecord) -> None:
                nonlocal count, failed
                count += 1
                failed += record.status == "error"
                on_record(key, record)

            def drain(limit: int) -> None:
                """Report finished records in order; wait while more than ``limit`` writes are pending."""
                while writing and (len(writing) > limit or writing[0][1].done()):
                    key, future = writing.popleft()
                    emit(key, future.result())

            def flush() -> None:
                infer_isolated(self.models, [it for _, it in batch], options)
                for key, it in batch:
                    writing.append((key, writers.submit(finish_item, it, bundle, out, options.formats)))
                batch.clear()
                drain(plan.pending_writes)

            keep = pixels_to_keep(options.formats)
            for key, item in _read_ahead(inputs, bundle, options.policy, keep, readers, plan.read_ahead):
                drain(plan.pending_writes)
                if distinct and item.error is None and not claim_instance(item, taken):
                    item.error = duplicate_error()
                if item.error is not None:
                    emit(key, error_record(item, bundle.label))
                    continue
                batch.append((key, item))
                if len(batch) >= options.batch_size:
                    flush()
            if batch:
                flush()
            drain(0)
        return StreamSummary(count, failed, time.perf_counter() - start)

    def run(
        self,
        inputs: Iterable[str],
        out: Path,
        on_record: Callable[[ResultRecord], None] | None = None,
        on_total: Callable[[int], None] | None = None,
        shard: Shard | None = None,
    ) -> Summary:
        """A batch (``triage predict``): :meth:`stream` over ``inputs`` (files, folders, globs), with the
        batch's bookkeeping in ``out``: records appended to results.jsonl as they come (an argument that
        matches no file gets an error record first), worklist.csv written at the end, and with
        ``options.resume`` the inputs already in results.jsonl skipped. With ``shard``, only the files of
        that shard run (:mod:`triage.io.manifest`), and ``out/shard.json`` says so for ``triage merge``.

        ``on_total`` is called once with the number of records to expect; ``on_record`` with each.
        Raises TriageError(WRITE_FAILED) when ``out`` already holds a results.jsonl and the options do not
        say ``resume`` (a finished batch is never overwritten by accident).
        """
        plan = plan_batch(inputs, out, self.options.resume, shard)
        if on_total is not None:
            on_total(plan.total)
        with BatchRecorder(out, plan, self.bundle.label, on_record) as recorder:
            todo = ((path, path) for path in plan.todo)
            self.stream(todo, out, lambda _key, rec: recorder.record(rec), distinct=True)
        return recorder.summary()


def predict(
    inputs: Iterable[str],
    out: Path,
    bundle: Bundle,
    options: PredictOptions,
    on_record: Callable[[ResultRecord], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    shard: Shard | None = None,
) -> Summary:
    """Load the bundle's models and run the cascade once over ``inputs``; see :meth:`Predictor.run`."""
    return Predictor(bundle, options).run(inputs, out, on_record, on_total, shard)
