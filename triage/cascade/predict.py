"""`triage predict`: the cascade over many files, with decoding and writing overlapping inference.

Readers (a thread pool) decode and preprocess up to `batch_size + readers` inputs ahead; the main thread
batches images across studies for the classifier, runs the segmenter only on the images the gate passes,
and hands each image to a writer pool; records are appended to results.jsonl as soon as their outputs
are written (in input order). Memory is bounded by prefetch + batch + pending writes (at most
`2 × batch_size`). Every input appears in results.jsonl exactly once.

Thread counts (:func:`thread_plan`) follow the cores this process may use unless the options name them:
ONNX Runtime intra-op threads = cores, readers = cores (at most 4), writers = half the cores (at least 1).
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from triage.backends import Device
from triage.bundle import Bundle
from triage.cascade.items import Item, load_item, pixels_to_keep
from triage.cascade.models import CascadeModels, normalised_cam
from triage.cascade.write import FORMATS, error_record, finish_item
from triage.errors import ErrorCode, TriageError
from triage.io.dicom import ReadPolicy
from triage.io.inputs import expand_inputs
from triage.memory import fix_mmap_threshold
from triage.outputs.batch import ResultsWriter, finished_inputs, read_results, write_worklist
from triage.outputs.records import ResultRecord

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictOptions:
    tta: bool = True
    saliency: bool = True
    formats: frozenset[str] = frozenset({"png", "seg", "sc", "saliency"})
    batch_size: int = 8
    policy: ReadPolicy = field(default_factory=ReadPolicy)
    device: Device = "auto"
    threads: int | None = None  # ONNX Runtime intra-op threads; None = the cores available
    read_workers: int | None = None  # decode/preprocess threads; None = chosen from the cores
    resume: bool = False
    write_workers: int | None = None  # output threads; None = chosen from the cores
    variant: str = "auto"  # model variant: auto (the card's default for the device), fp32, int8, ...

    def __post_init__(self) -> None:
        bad = sorted(set(self.formats) - set(FORMATS))
        if bad:
            raise ValueError(f"unknown output formats {bad}; valid: {list(FORMATS)}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")
        for name in ("threads", "read_workers", "write_workers"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 (or None for automatic), got {value}")


@dataclass
class Summary:
    records: list[ResultRecord]
    skipped: int
    seconds: float

    @property
    def failed(self) -> int:
        return sum(r.status == "error" for r in self.records)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class ThreadPlan:
    inference: int  # ONNX Runtime intra-op threads
    readers: int  # decode + preprocess
    writers: int  # outputs


def thread_plan(options: PredictOptions) -> ThreadPlan:
    """The thread counts for ``options``: each one it names, else chosen from the cores available."""
    cores = _cores()
    return ThreadPlan(
        inference=options.threads or cores,
        readers=options.read_workers or max(1, min(cores, 4)),
        writers=options.write_workers or max(1, cores // 2),
    )


def _infer(models: CascadeModels, batch: list[Item], options: PredictOptions) -> None:
    """Gate, segment and saliency for a batch, filling the items in place."""
    t0 = time.perf_counter()
    x = np.stack([it.gate_input.x for it in batch])  # type: ignore[union-attr]
    prob, cam = models.gate(x, options.tta)
    t1 = time.perf_counter()
    gate = models.bundle.thresholds.gate
    cams = normalised_cam(cam) if (cam is not None and options.saliency) else None
    for i, it in enumerate(batch):
        it.probability = float(prob[i])
        it.gated = bool(prob[i] >= gate)
        it.cam = cams[i] if cams is not None else None
        it.timings_ms["gate"] = 1000 * (t1 - t0) / len(batch)
    gated = [it for it in batch if it.gated]
    if gated:
        xs = np.stack([it.seg_input.x for it in gated])  # type: ignore[union-attr]
        seg = models.segment(xs, options.tta)
        t2 = time.perf_counter()
        for i, it in enumerate(gated):
            it.seg_prob = seg[i]
            it.timings_ms["segment"] = 1000 * (t2 - t1) / len(gated)
        if options.saliency and models.saliency is not None:
            maps = models.saliency_map(np.stack([it.sal_input.x for it in gated]))  # type: ignore[union-attr]
            t3 = time.perf_counter()
            for i, it in enumerate(gated):
                it.saliency = maps[i]
                it.timings_ms["saliency"] = 1000 * (t3 - t2) / len(gated)


def _infer_isolated(models: CascadeModels, batch: list[Item], options: PredictOptions) -> None:
    """Run the batch; if it fails, run each item alone so one bad image fails only itself."""
    try:
        _infer(models, batch, options)
        return
    except Exception as exc:
        logger.warning("batch of %d failed (%s); retrying images one by one", len(batch), type(exc).__name__)
    for it in batch:
        try:
            _infer(models, [it], options)
        except Exception as exc:
            it.error = TriageError(ErrorCode.INFERENCE_FAILED, f"{type(exc).__name__}: {exc}")


def _prefetched(
    paths: list[str], bundle: Bundle, options: PredictOptions, pool: ThreadPoolExecutor, depth: int
) -> Iterator[Item]:
    """Items in input order, with at most `depth` reads in flight."""
    pending: deque[Future[Item]] = deque()
    it = iter(paths)
    keep = pixels_to_keep(options.formats)
    for path in it:
        pending.append(pool.submit(load_item, path, bundle, options.policy, keep))
        if len(pending) >= depth:
            break
    while pending:
        item = pending.popleft().result()
        nxt = next(it, None)
        if nxt is not None:
            pending.append(pool.submit(load_item, nxt, bundle, options.policy, keep))
        yield item


class Predictor:
    """The bundle's models, loaded once; :meth:`run` them over any number of batches.

    The CLI makes one and runs it once; a long-running service (the folder watcher, the DICOM listener)
    keeps one and runs it per study, so models are loaded and optimised only at start-up.
    """

    def __init__(self, bundle: Bundle, options: PredictOptions, models: CascadeModels | None = None) -> None:
        fix_mmap_threshold()  # flat memory over thousands of studies (triage/memory.py)
        self.bundle = bundle
        self.options = options
        self.models = models or CascadeModels(
            bundle, options.device, thread_plan(options).inference, variant=options.variant
        )

    def run(
        self,
        inputs: Iterable[str],
        out: Path,
        on_record: Callable[[ResultRecord], None] | None = None,
        on_total: Callable[[int], None] | None = None,
    ) -> Summary:
        """Run the cascade over ``inputs`` (files, folders, globs), writing everything under ``out``.

        Raises TriageError(WRITE_FAILED) when ``out`` already holds a results.jsonl and the options do not
        say ``resume`` (a finished batch is never overwritten by accident).
        """
        return _run(self.models, inputs, out, self.options, on_record, on_total)


def predict(
    inputs: Iterable[str],
    out: Path,
    bundle: Bundle,
    options: PredictOptions,
    on_record: Callable[[ResultRecord], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> Summary:
    """Load the bundle's models and run the cascade once over ``inputs``; see :meth:`Predictor.run`."""
    return Predictor(bundle, options).run(inputs, out, on_record, on_total)


def _run(
    models: CascadeModels,
    inputs: Iterable[str],
    out: Path,
    options: PredictOptions,
    on_record: Callable[[ResultRecord], None] | None,
    on_total: Callable[[int], None] | None,
) -> Summary:
    bundle = models.bundle
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    if (out / "results.jsonl").exists() and not options.resume:
        raise TriageError(
            ErrorCode.WRITE_FAILED,
            f"{out / 'results.jsonl'} exists: pass --resume to continue that batch, or choose another --out",
        )
    done = finished_inputs(out) if options.resume else set()
    files, missing = expand_inputs(list(inputs))
    todo = [str(p) for p in files if str(p) not in done]
    skipped = len(files) - len(todo)
    if on_total is not None:
        on_total(len(todo) + sum(arg not in done for arg, _ in missing))
    records: list[ResultRecord] = []
    plan = thread_plan(options)
    with (
        ResultsWriter(out) as results,
        ThreadPoolExecutor(plan.readers, thread_name_prefix="read") as readers,
        ThreadPoolExecutor(plan.writers, thread_name_prefix="write") as writers,
    ):

        def emit(record: ResultRecord) -> None:
            results.write(record)
            records.append(record)
            if on_record is not None:
                on_record(record)

        for arg, err in missing:
            if arg not in done:
                emit(error_record(Item(input=arg, error=err), bundle.label))
        writing: deque[Future[ResultRecord]] = deque()

        def drain(limit: int) -> None:
            """Emit finished records in order; wait while more than ``limit`` writes are pending."""
            while writing and (len(writing) > limit or writing[0].done()):
                emit(writing.popleft().result())

        batch: list[Item] = []

        def flush() -> None:
            _infer_isolated(models, batch, options)
            for it in batch:
                writing.append(writers.submit(finish_item, it, bundle, out, options.formats))
            batch.clear()
            drain(2 * options.batch_size)

        depth = options.batch_size + plan.readers
        for item in _prefetched(todo, bundle, options, readers, depth=depth):
            drain(2 * options.batch_size)
            if item.error is not None:
                emit(error_record(item, bundle.label))
                continue
            batch.append(item)
            if len(batch) >= options.batch_size:
                flush()
        if batch:
            flush()
        drain(0)
    write_worklist(out, read_results(out))
    return Summary(records, skipped, time.perf_counter() - start)
