"""The cascade over a stream of keyed input files, for long-running services.

:meth:`triage.cascade.predict.Predictor.run` is a batch: it expands paths, keeps ``results.jsonl`` and
``worklist.csv`` and refuses an ``out`` that already holds results. A service (the folder watcher, the
DICOM listener) needs the same pipeline without that bookkeeping: it pulls files study by study from its
job store, and wants each file's record back together with the job it belongs to. :func:`run_stream`
does that with the same stages as ``Predictor.run`` — readers decode ahead in threads, images are
batched across studies for the models, writers post-process and write the per-study outputs (atomic,
deterministic names and UIDs, so a re-run replaces) — and hands every record to ``on_record(key, rec)``
in the calling thread. Nothing else is written under ``out``.

``inputs`` is consumed lazily, at most ``2 × batch_size`` files ahead of the models, so a service can
claim work from its queue only as the pipeline has room for it (bounded memory), and stop claiming on
shutdown: the stream then finishes what it took and returns.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from triage.cascade.items import Item, load_item, pixels_to_keep
from triage.cascade.models import CascadeModels
from triage.cascade.predict import PredictOptions, _infer_isolated
from triage.cascade.write import error_record, finish_item
from triage.outputs.records import ResultRecord

K = TypeVar("K")


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _read_ahead(
    inputs: Iterable[tuple[K, str]],
    models: CascadeModels,
    options: PredictOptions,
    pool: ThreadPoolExecutor,
    depth: int,
) -> Iterator[tuple[K, Item]]:
    """(key, item) in input order, with at most ``depth`` reads in flight; ``inputs`` pulled lazily."""
    pending: deque[tuple[K, Future[Item]]] = deque()
    source = iter(inputs)
    keep = pixels_to_keep(options.formats)

    def submit() -> bool:
        nxt = next(source, None)
        if nxt is None:
            return False
        key, path = nxt
        pending.append((key, pool.submit(load_item, path, models.bundle, options.policy, keep)))
        return True

    while len(pending) < depth and submit():
        pass
    while pending:
        key, future = pending.popleft()
        item = future.result()
        submit()
        yield key, item


def run_stream(
    models: CascadeModels,
    options: PredictOptions,
    inputs: Iterable[tuple[K, str]],
    out: Path,
    on_record: Callable[[K, ResultRecord], None],
) -> int:
    """Run the cascade over ``inputs`` ((key, file path) pairs), writing per-study outputs under ``out``.

    Every input yields exactly one :class:`ResultRecord` (an error record for a file that cannot be
    used), passed to ``on_record(key, record)`` in the calling thread as soon as it is written; records
    of a batch come in input order, but a file that fails to read is reported before the good files
    still in the pipeline. Returns the number of inputs processed. ``options.resume`` is ignored.
    """
    bundle = models.bundle
    cores = _cores()
    count = 0
    with (
        ThreadPoolExecutor(options.read_workers or cores, thread_name_prefix="read") as readers,
        ThreadPoolExecutor(max(1, cores // 2), thread_name_prefix="write") as writers,
    ):
        writing: deque[tuple[K, Future[ResultRecord]]] = deque()
        batch: list[tuple[K, Item]] = []

        def drain(limit: int) -> None:
            while len(writing) > limit:
                key, future = writing.popleft()
                on_record(key, future.result())

        def flush() -> None:
            _infer_isolated(models, [it for _, it in batch], options)
            for key, it in batch:
                writing.append((key, writers.submit(finish_item, it, bundle, out, options.formats)))
            batch.clear()
            drain(2 * options.batch_size)

        for key, item in _read_ahead(inputs, models, options, readers, depth=2 * options.batch_size):
            count += 1
            if item.error is not None:
                on_record(key, error_record(item, bundle.label))
                continue
            batch.append((key, item))
            if len(batch) >= options.batch_size:
                flush()
        if batch:
            flush()
        drain(0)
    return count
