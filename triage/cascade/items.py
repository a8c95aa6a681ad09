"""One input through reading and preprocessing (runs in reader threads), and its inference result."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from triage.bundle import Bundle, ModelSpec
from triage.cascade.preprocess import Geometry, fit, normalise
from triage.errors import ErrorCode, TriageError
from triage.io.dicom import DicomImage, ReadPolicy, read_image


@dataclass
class Prepared:
    """A model input (C, H, W) and where the image sits on that model's grid."""

    x: NDArray[np.float32]
    geometry: Geometry


def same_input_contract(a: ModelSpec, b: ModelSpec) -> bool:
    """Whether two models take identical inputs (size, resize, channels, normalisation)."""
    return (a.input_size, a.resize, a.channels, a.normalization) == (
        b.input_size,
        b.resize,
        b.channels,
        b.normalization,
    )


def prepare(pixels: NDArray[np.float32], spec: ModelSpec) -> Prepared:
    grid, geometry = fit(pixels, spec.input_size, spec.resize)
    return Prepared(normalise(grid, spec), geometry)


@dataclass
class Item:
    """An input file on its way through the cascade. `error` set means it stops here."""

    input: str
    image: DicomImage | None = None
    error: TriageError | None = None
    gate_input: Prepared | None = None
    seg_input: Prepared | None = None
    sal_input: Prepared | None = None  # the saliency model's input (is gate_input when the contracts agree)
    timings_ms: dict[str, float] = field(default_factory=dict)
    # filled by inference
    probability: float | None = None
    gated: bool = False
    cam: NDArray[np.float32] | None = None  # (h, w) on the classifier's output grid, [0, 1]
    seg_prob: NDArray[np.float32] | None = None  # (H, W) on the segmenter's grid
    saliency: NDArray[np.float32] | None = None  # (h, w) of the saliency model, [0, 1]


def load_item(path: str, bundle: Bundle, policy: ReadPolicy) -> Item:
    """Read and preprocess one input; never raises (errors end up in `Item.error`)."""
    item = Item(input=path)
    t0 = time.perf_counter()
    try:
        item.image = read_image(Path(path), policy)
        t1 = time.perf_counter()
        item.gate_input = prepare(item.image.pixels, bundle.classifier)
        item.seg_input = prepare(item.image.pixels, bundle.segmenter)
        if bundle.saliency is not None:
            item.sal_input = (
                item.gate_input
                if same_input_contract(bundle.saliency, bundle.classifier)
                else prepare(item.image.pixels, bundle.saliency)
            )
        item.timings_ms = {"read": 1000 * (t1 - t0), "preprocess": 1000 * (time.perf_counter() - t1)}
    except TriageError as exc:
        item.error = exc
    except Exception as exc:  # a crash inside one file never ends the batch
        item.error = TriageError(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")
    return item
