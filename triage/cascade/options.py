"""What a cascade run is asked to do (:class:`PredictOptions`), and the engine's one thread plan and
read-ahead rule (:func:`thread_plan`), shared by every caller of ``Predictor.stream``."""

from __future__ import annotations

from dataclasses import dataclass, field

from triage.backends import Device
from triage.io.dicom import ReadPolicy
from triage.outputs.formats import PREDICT_DEFAULT, check_formats
from triage.system import usable_cores


@dataclass(frozen=True)
class PredictOptions:
    """Options of a cascade run; a bad value raises ValueError naming it and what is valid."""

    tta: bool = True
    saliency: bool = True
    formats: frozenset[str] = PREDICT_DEFAULT  # triage/outputs/formats.py
    batch_size: int = 8
    policy: ReadPolicy = field(default_factory=ReadPolicy)
    device: Device = "auto"
    threads: int | None = None  # ONNX Runtime intra-op threads; None = the cores available
    read_workers: int | None = None  # decode/preprocess threads; None = chosen from the cores
    resume: bool = False  # Predictor.run only: continue a batch in `out`
    write_workers: int | None = None  # output threads; None = chosen from the cores
    variant: str = "auto"  # model variant: auto (the card's default for the device), fp32, int8, ...

    def __post_init__(self) -> None:
        check_formats(self.formats)
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")
        for name in ("threads", "read_workers", "write_workers"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 (or None for automatic), got {value}")


@dataclass(frozen=True)
class ThreadPlan:
    """The engine's threads and queue depths for one set of options.

    inference: ONNX Runtime intra-op threads. readers: decode + preprocess threads. writers: output
    threads. read_ahead: inputs being read or read and waiting for the models (the inputs iterable is
    pulled only to keep this many). pending_writes: images being written, or written and waiting to be
    reported in order, before the models wait for the writers. Images in flight (pulled from the inputs,
    record not yet reported) are therefore at most ``read_ahead + batch_size + pending_writes``.
    """

    inference: int
    readers: int
    writers: int
    read_ahead: int
    pending_writes: int

    def in_flight(self, batch_size: int) -> int:
        """The most inputs pulled but not yet reported at any time (the memory bound)."""
        return self.read_ahead + batch_size + self.pending_writes


def thread_plan(options: PredictOptions) -> ThreadPlan:
    """The plan for ``options``: each count it names, else chosen from the usable cores: inference =
    cores, readers = cores (at most 4), writers = half the cores (at least 1); read-ahead = one batch
    plus one image per reader, pending writes = two batches."""
    cores = usable_cores()
    readers = options.read_workers or max(1, min(cores, 4))
    return ThreadPlan(
        inference=options.threads or cores,
        readers=readers,
        writers=options.write_workers or max(1, cores // 2),
        read_ahead=options.batch_size + readers,
        pending_writes=2 * options.batch_size,
    )
