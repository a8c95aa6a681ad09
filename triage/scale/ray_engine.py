"""``triage predict --engine ray``: the cascade on a Ray cluster, through Ray Data (the ``scale`` extra).

The driver (this process) does the batch's bookkeeping exactly as ``triage predict`` does
(:mod:`triage.cascade.batch`: refuse or resume ``--out``, expand and shard the inputs, record the
arguments that name nothing), then hands the files to Ray Data: ``from_items`` → ``map_batches`` on an
actor pool. Each actor loads the bundle once and runs :meth:`Predictor.stream` — the one cascade engine
(reading, gating, TTA, segmentation, thresholds, per-study outputs under ``--out``, atomic and named by
study/SOP UID, so actors never collide and a retried task rewrites the same files). Actors return their
records; only the driver appends them to results.jsonl (:class:`BatchRecorder` records each input once,
so a task that Ray retries after a worker died cannot duplicate one) and writes worklist.csv.

Requires the ``--out`` folder and the inputs on a file system every node sees (a file share), and the
bundle folder likewise. Ray is imported lazily: without the extra, a one-line hint.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from triage.cascade.batch import BatchRecorder, Summary, plan_batch
from triage.cascade.options import PredictOptions
from triage.errors import ErrorCode, TriageError
from triage.io.manifest import Shard
from triage.outputs.records import ResultRecord

logger = logging.getLogger(__name__)

HINT = "--engine ray needs the scale extra: pip install 'triage[scale]'"
ADDRESS_FORMS = (
    "HOST:PORT of a Ray head (`ray start --head`), ray://HOST:10001, auto, local (a new Ray on this "
    "machine), or no --address (RAY_ADDRESS or a Ray running here, else a new one)"
)


class ScaleError(Exception):
    """The Ray engine cannot start (no extra, unreachable cluster); the message is one line."""


@dataclass(frozen=True)
class RayOptions:
    """address: a running cluster (None: start a local Ray). actors: pool size (None: as many as the
    cluster's CPUs, or GPUs, allow). cpus_per_actor / gpus_per_actor: Ray resources of each actor; its
    ONNX Runtime and reader threads follow ``cpus_per_actor``."""

    address: str | None = None
    actors: int | None = None
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0

    def __post_init__(self) -> None:
        if self.cpus_per_actor <= 0 or self.gpus_per_actor < 0:
            raise ValueError(
                f"--cpus-per-actor must be > 0 and --gpus-per-actor >= 0, got "
                f"{self.cpus_per_actor} and {self.gpus_per_actor}"
            )
        if self.actors is not None and self.actors < 1:
            raise ValueError(f"--actors must be at least 1 (or 0 for automatic), got {self.actors}")


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise ScaleError(HINT) from exc
    return ray


def _probe(address: str, timeout: float = 5.0) -> None:
    """Fail fast (Ray itself retries for minutes) when nothing listens at a HOST:PORT address."""
    if address in ("auto", "local"):
        return
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ScaleError(f"--address {address!r} is not valid; use {ADDRESS_FORMS}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ScaleError(
            f"--address {address!r}: no Ray cluster reachable ({exc.strerror or exc}); use {ADDRESS_FORMS}"
        ) from exc


def _connect(ray: Any, address: str | None) -> None:
    if address is not None:
        _probe(address)
    try:
        if address in (None, "local"):  # None: RAY_ADDRESS or a Ray started on this machine, else a new one
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
                     log_to_driver=True)
        else:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ScaleError(
            f"--address {address!r}: cannot join the Ray cluster ({first}); use {ADDRESS_FORMS}"
        ) from exc


def actor_options(options: PredictOptions, cpus: float, gpus: float) -> PredictOptions:
    """The options each actor runs with: its thread counts from its CPU share (unless named), CUDA when it
    has a GPU and the device is ``auto``."""
    cores = max(1, math.floor(cpus))
    return replace(
        options,
        threads=options.threads or cores,
        read_workers=options.read_workers or max(1, min(cores, 4)),
        write_workers=options.write_workers or max(1, cores // 2),
        device="cuda" if gpus > 0 and options.device == "auto" else options.device,
        resume=False,
    )


class CascadeActor:
    """One Ray actor: the bundle's models loaded once; each call runs the cascade engine on a batch of
    input paths and returns their records as JSON (outputs are already written under ``out``)."""

    def __init__(self, bundle_dir: str, out: str, options: PredictOptions) -> None:
        from triage.bundle import load_bundle
        from triage.cascade.predict import Predictor
        from triage.logsafe import configure

        configure(logging.WARNING)  # worker logs reach the driver's terminal: withhold third-party text
        self.out = Path(out)
        self.predictor = Predictor(load_bundle(Path(bundle_dir)), options)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """``batch``: "input" (the path as the user gave it, the record's key) and "path" (absolute: an
        actor's working directory is not the driver's)."""
        import numpy as np

        inputs = [str(p) for p in batch["input"]]
        records: dict[str, ResultRecord] = {}
        paths = [str(p) for p in batch["path"]]
        self.predictor.stream(zip(inputs, paths, strict=True), self.out, records.__setitem__)
        for key, path in zip(inputs, paths, strict=True):
            _name_as_given(records[key], key, path)
        return {
            "input": np.array(inputs, dtype=object),
            "record": np.array([records[p].to_json() for p in inputs], dtype=object),
        }


def _name_as_given(record: ResultRecord, key: str, path: str) -> None:
    """Name ``record`` by the input as the user gave it (``key``), not the absolute ``path`` an actor read:
    the digest that --resume and merges match on is the key's, and where the worker redacted the path
    (patient identifiers in it), the key is redacted with the same file's identifiers."""
    from triage.io.dicomfile import patient_identifiers, read_header
    from triage.outputs.records import REDACTED, input_digest, redact

    record.input_sha256 = input_digest(key)
    if record.input == path:
        record.input = key
        return
    try:
        private: tuple[str, ...] = patient_identifiers(read_header(Path(path)))
    except TriageError:
        private = ()
    named = redact(key, private)
    record.input = named if named != key else REDACTED


def _pool_size(ray: Any, ray_options: RayOptions, tasks: int) -> int:
    if ray_options.actors:
        return min(ray_options.actors, tasks)
    resources = ray.cluster_resources()
    if ray_options.gpus_per_actor > 0:
        fit = resources.get("GPU", 0) / ray_options.gpus_per_actor
    else:
        fit = resources.get("CPU", 1) / ray_options.cpus_per_actor
    return max(1, min(int(fit), tasks))


def run_ray(
    inputs: Iterable[str],
    out: Path,
    bundle_dir: Path,
    bundle_label: str,
    options: PredictOptions,
    ray_options: RayOptions,
    on_record: Callable[[ResultRecord], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    shard: Shard | None = None,
) -> Summary:
    """The batch of :meth:`Predictor.run`, with the cascade running in a Ray actor pool.

    Raises ScaleError (no extra, unreachable cluster), TriageError(WRITE_FAILED) for an ``out`` holding a
    finished batch without ``options.resume``, and TriageError(INTERNAL) when the Ray job fails (records
    finished until then are in results.jsonl: ``--resume`` continues).
    """
    ray = _import_ray()
    plan = plan_batch(inputs, out, options.resume, shard)
    if on_total is not None:
        on_total(plan.total)
    started = not ray.is_initialized()
    if started:
        _connect(ray, ray_options.address)
    try:
        with BatchRecorder(out, plan, bundle_label, on_record) as recorder:
            if plan.todo:
                _execute(ray, plan.todo, out, bundle_dir, options, ray_options, recorder)
    finally:
        if started:
            ray.shutdown()
    if recorder.duplicates:
        logger.info("%d records reported twice by retried tasks were dropped", recorder.duplicates)
    return recorder.summary()


def _execute(
    ray: Any, todo: list[str], out: Path, bundle_dir: Path, options: PredictOptions,
    ray_options: RayOptions, recorder: BatchRecorder,
) -> None:
    probe = _pool_size(ray, ray_options, len(todo))
    per_task = max(1, min(4 * options.batch_size, math.ceil(len(todo) / (2 * probe))))
    tasks = math.ceil(len(todo) / per_task)
    actors = _pool_size(ray, ray_options, tasks)
    logger.info("ray: %d inputs in %d tasks on %d actors", len(todo), tasks, actors)
    items = [{"input": p, "path": os.path.abspath(p)} for p in todo]
    dataset = ray.data.from_items(items, override_num_blocks=tasks)
    gpus = ray_options.gpus_per_actor
    results = dataset.map_batches(
        CascadeActor,
        fn_constructor_kwargs={
            "bundle_dir": str(bundle_dir.resolve()),
            "out": str(out.resolve()),
            "options": actor_options(options, ray_options.cpus_per_actor, gpus),
        },
        batch_size=per_task,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=ray_options.cpus_per_actor,
        num_gpus=gpus or None,
    )
    try:
        for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
            for text in batch["record"]:
                recorder.record(ResultRecord.from_dict(json.loads(str(text))))
    except Exception as exc:  # a failed Ray job (an actor that cannot start, a lost cluster)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise TriageError(
            ErrorCode.INTERNAL,
            f"the Ray job stopped ({type(exc).__name__}: {first}); finished records are kept, "
            "run again with --resume",
        ) from exc
