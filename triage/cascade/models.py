"""The cascade's model calls: gate (classifier + CAM), segmenter and optional saliency model, with TTA.

All take prepared (N, C, H, W) float32 batches on the models' own grids; none knows about files.
"""

from __future__ import annotations

import logging

import numpy as np
from numpy.typing import NDArray

from triage.backends import Device, Model, cuda_available, load_model
from triage.bundle import Bundle, ModelSpec, select_variant
from triage.cascade import tta as tta_ops
from triage.errors import TriageError

Batch = NDArray[np.float32]
logger = logging.getLogger(__name__)


def sigmoid(x: Batch) -> Batch:
    out: Batch = (1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))).astype(np.float32)
    return out


def normalised_cam(cam: Batch) -> Batch:
    """(N, h, w) class-activation maps → ReLU, then divided by each map's max (0 where the max is 0)."""
    pos = np.maximum(cam, 0.0)
    peak = pos.reshape(len(pos), -1).max(axis=1).reshape(-1, 1, 1)
    out: Batch = np.where(peak > 0, pos / np.where(peak > 0, peak, 1.0), 0.0).astype(np.float32)
    return out


def _load(spec: ModelSpec, device: Device, threads: int | None, variant: str) -> tuple[Model, str]:
    """(model, variant name): ``variant`` by name, or with "auto" the card's default for the device; an
    automatic GPU choice that cannot load here (no TensorRT, no GPU) falls back to the CPU default."""
    kind = "cuda" if device == "cuda" or (device == "auto" and cuda_available()) else "cpu"
    chosen = select_variant(spec, variant, kind)
    try:
        return load_model(chosen, device, threads), chosen.precision
    except TriageError as exc:
        if variant != "auto" or kind == "cpu" or device == "cuda":
            raise
        fallback = select_variant(spec, "auto", "cpu")
        logger.warning("%s: %s; using the %s variant on the CPU", spec.role, exc.message, fallback.precision)
        return load_model(fallback, "cpu", threads), fallback.precision


class CascadeModels:
    """The bundle's models loaded on one device.

    ``backends`` replaces the models the card names by ready-made callables with the same outputs, by
    role ("classifier", "segmenter", "saliency"): e.g. PyTorch modules wrapped in
    :class:`training.torch_backend.TorchModel` to evaluate a training run through exactly this
    cascade (thresholds, TTA and preprocessing still come from the bundle's card).

    ``variant``: "auto" (the card's default variant per model for the device: e.g. INT8 on the CPU where
    the export found it pays, TensorRT on a GPU) or a variant name every model has ("fp32", "int8", ...).

    ``adaptive``: use the card's adaptive TTA for the gate when it has one (False: full TTA always).
    """

    def __init__(
        self,
        bundle: Bundle,
        device: Device = "auto",
        threads: int | None = None,
        backends: dict[str, Model] | None = None,
        variant: str = "auto",
        adaptive: bool = True,
    ) -> None:
        given = dict(backends or {})
        unknown = sorted(set(given) - {"classifier", "segmenter", "saliency"})
        if unknown:
            raise ValueError(f"unknown backend roles {unknown}; valid: classifier, segmenter, saliency")
        self.bundle = bundle
        self.adaptive = adaptive
        self.tta_counts = {"images": 0, "full_tta": 0}  # adaptive TTA: gated images / those given full TTA
        self.variants: dict[str, str] = {}
        loaded: dict[str, Model | None] = {}
        for role in ("classifier", "segmenter", "saliency"):
            spec = getattr(bundle, role)
            if role in given:
                loaded[role], self.variants[role] = given[role], given[role].provider
            elif spec is not None:
                loaded[role], self.variants[role] = _load(spec, device, threads, variant)
            else:
                loaded[role] = None
        assert loaded["classifier"] is not None and loaded["segmenter"] is not None
        self.classifier: Model = loaded["classifier"]
        self.segmenter: Model = loaded["segmenter"]
        self.saliency: Model | None = loaded["saliency"]

    @property
    def provider(self) -> str:
        return self.classifier.provider

    def gate(self, x: Batch, use_tta: bool) -> tuple[Batch, Batch | None]:
        """P(pneumothorax) per image (N,) and the CAM (N, h, w) if the classifier outputs one.

        With the card's ``adaptive_tta`` (and ``adaptive``, the default) the TTA's other passes run only
        on the images whose un-flipped probability lies within the margin of the gate threshold; the
        others keep their un-flipped probability and CAM (triage.cascade.tta.adaptive_gate)."""
        transforms = self.bundle.tta if use_tta else ("none",)
        margin = self.bundle.adaptive_tta.gate_margin if self.bundle.adaptive_tta and self.adaptive else None
        if margin is None or len(transforms) == 1 or transforms[0] != "none":
            return self._gate_outputs(self.classifier(tta_ops.expand(x, transforms)), len(x), transforms)
        plain = self.classifier(x)
        prob, cam = self._gate_outputs(plain, len(x), ("none",))
        doubtful = tta_ops.doubtful(prob, self.bundle.thresholds.gate, margin)
        self.tta_counts["images"] += len(x)
        self.tta_counts["full_tta"] += len(doubtful)
        if len(doubtful):
            rest = self.classifier(tta_ops.expand(x[doubtful], transforms[1:]))
            both = {k: np.concatenate([plain[k][doubtful], rest[k]]) for k in rest}
            prob[doubtful], merged_cam = self._gate_outputs(both, len(doubtful), transforms)
            if cam is not None and merged_cam is not None:
                cam[doubtful] = merged_cam
        return prob, cam

    @staticmethod
    def _gate_outputs(
        out: dict[str, Batch], n: int, transforms: tuple[str, ...]
    ) -> tuple[Batch, Batch | None]:
        """The classifier's raw outputs for ``transforms`` (transform-major) → (probabilities, CAMs)."""
        prob = tta_ops.merge_scalars(sigmoid(out["logit"].reshape(-1)), n, transforms)
        cam = None
        if "cam" in out:
            cam = tta_ops.merge_maps(
                out["cam"].reshape(len(out["cam"]), *out["cam"].shape[-2:]), n, transforms
            )
        return prob, cam

    def segment(self, x: Batch, use_tta: bool) -> Batch:
        """Pixel probabilities (N, H, W) on the segmenter's grid."""
        transforms = self.bundle.tta if use_tta else ("none",)
        p = self.segmenter(tta_ops.expand(x, transforms))["probability"]
        return tta_ops.merge_maps(p.reshape(len(p), *p.shape[-2:]), len(x), transforms)

    def saliency_outputs(self, x: Batch) -> tuple[Batch, Batch | None]:
        """The saliency model's map (N, h, w), scaled to [0, 1] per image, and its P(pneumothorax) (N,)
        when the graph has a ``logit`` output (its classification head, or a dual-encoder model's fused
        head: docs/saliency.md), else None."""
        if self.saliency is None:
            raise ValueError("the bundle has no saliency model")
        out = self.saliency(x)
        m = out["map"]
        prob = sigmoid(out["logit"].reshape(-1)) if "logit" in out else None
        return normalised_cam(m.reshape(len(m), *m.shape[-2:])), prob

    def saliency_map(self, x: Batch) -> Batch:
        """The saliency model's map alone (see :meth:`saliency_outputs`)."""
        return self.saliency_outputs(x)[0]
