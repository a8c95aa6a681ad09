"""The models under evaluation: a bundle (ONNX Runtime through the runtime's own cascade code, no torch) or
training runs (PyTorch; built by ``training.eval_models``), behind one interface.

A :class:`Cascade` may lack its classifier (a lone segmenter or baseline run: every image is segmented)
or its segmenter (a lone classifier run: classification sections only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from triage.backends import Device
from triage.bundle import ModelSpec, Thresholds, load_bundle
from triage.cascade.models import CascadeModels

Batch = NDArray[np.float32]
# The runtime's decision rule with nothing chosen yet: gate 0.5, pixel threshold 0.5 ("argmax").
ARGMAX = Thresholds(
    gate=0.5,
    top=0.5,
    min_area=0,
    bottom=0.5,
    min_component=0,
    chosen_by={"data": "none", "metric": "none (argmax defaults)", "value": None},
)


@dataclass
class Cascade:
    """``models`` is the runtime's :class:`CascadeModels` (or a subclass whose models are torch modules)."""

    label: str
    kind: str  # bundle | runs
    models: CascadeModels
    classifier: ModelSpec | None
    segmenter: ModelSpec | None
    thresholds: Thresholds
    tta: tuple[str, ...]
    provenance: dict[str, Any] = field(default_factory=dict)

    def gate(self, x: Batch, use_tta: bool) -> tuple[Batch, Batch | None]:
        """P(pneumothorax) (N,) and the CAM (N, h, w) or None; all ones without a classifier."""
        if self.classifier is None:
            return np.ones(len(x), np.float32), None
        return self.models.gate(x, use_tta)

    def segment(self, x: Batch, use_tta: bool) -> Batch:
        if self.segmenter is None:
            raise ValueError("this evaluation has no segmenter")
        return self.models.segment(x, use_tta)


def from_bundle(path: Path, device: Device = "auto", threads: int | None = None) -> Cascade:
    """A sealed bundle, run with ONNX Runtime (or TensorRT) exactly as ``triage predict`` runs it."""
    bundle = load_bundle(path)
    models = CascadeModels(bundle, device, threads)
    return Cascade(
        label=bundle.label,
        kind="bundle",
        models=models,
        classifier=bundle.classifier,
        segmenter=bundle.segmenter,
        thresholds=bundle.thresholds,
        tta=bundle.tta,
        provenance={"bundle": str(path), **bundle.provenance},
    )


def is_bundle(path: Path) -> bool:
    return (Path(path) / "card.json").is_file()
