"""Parity of an exported model against the trained network, measured with the runtime's own cascade code.

Both sides are :class:`triage.cascade.models.CascadeModels` (the reference wraps the PyTorch modules with
:class:`training.torch_backend.TorchModel`), so TTA, sigmoid, CAM normalisation and the triplet
threshold are exactly what ``triage predict`` does. Figures per model, on every validation image:

* classifier: max |Δ| of P(pneumothorax) after TTA, max |Δ| of the displayed CAM (ReLU, /max, [0, 1]),
  and the number of images whose gate decision (P ≥ gate) differs;
* segmenter (run on every image, not only the gated ones, for coverage): max |Δ| of the probability map
  after TTA, the number of images whose triplet mask differs, the differing pixels, and the number
  whose decision (empty mask or not) differs;
* saliency: max |Δ| of the displayed map (ReLU, /max, [0, 1]), on the saliency model's own input, and of
  its P(pneumothorax) when the graph has a logit (reported as ``saliency_probability``).

``roles`` limits what is measured (``triage export-saliency`` measures only the saliency model).

Tolerances per precision are :data:`TOLERANCES` (also written into the card). FP32 graphs must decide
identically; reduced precisions (INT8, FP16) are held to max |Δ| only: they may flip a decision whose
probability lies within that distance of a threshold, which is counted and recorded, not judged here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from export.errors import ExportError
from export.images import ImageSet
from triage.bundle import Thresholds
from triage.cascade.models import CascadeModels, normalised_cam
from triage.cascade.postprocess import triplet_mask

ROLES = ("classifier", "segmenter", "saliency")

TOLERANCES: dict[str, dict[str, float | str]] = {
    # max |Δ| of probabilities / maps in [0, 1]; every gate decision and every triplet mask identical.
    "fp32": {"probability": 1e-4, "map": 1e-3, "decisions": "identical"},
    # reduced precision: held to max |Δ|; decisions can then flip only for images whose probability lies
    # within that distance of a threshold: flips are counted and recorded, the metric change is measured
    # on labelled data (benchmarks/bench_int8.py), and INT8 is the CPU default only where it pays.
    "fp16": {"probability": 0.01, "map": 0.05, "decisions": "reported"},
    "int8": {"probability": 0.05, "map": 0.15, "decisions": "reported"},
}


def tolerance_for(precision: str) -> dict[str, float | str]:
    for key, tol in TOLERANCES.items():
        if key in precision:
            return tol
    return TOLERANCES["fp32"]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


@dataclass
class _Outputs:
    prob: np.ndarray | None
    cam: np.ndarray | None
    seg: np.ndarray | None
    sal: np.ndarray | None
    sal_prob: np.ndarray | None


def _run(models: CascadeModels, images: ImageSet, roles: tuple[str, ...], tta: bool, batch: int) -> _Outputs:
    probs, cams, segs, sals, sal_probs = [], [], [], [], []
    for start in range(0, len(images.items), batch):
        chunk = images.items[start : start + batch]
        if "classifier" in roles:
            prob, cam = models.gate(np.stack([ImageSet.input(it, "classifier") for it in chunk]), tta)
            probs.append(prob)
            if cam is not None:
                cams.append(normalised_cam(cam))
        if "segmenter" in roles:
            segs.append(models.segment(np.stack([ImageSet.input(it, "segmenter") for it in chunk]), tta))
        if "saliency" in roles and models.saliency is not None:
            x = np.stack([ImageSet.input(it, "saliency") for it in chunk])
            sal, sal_prob = models.saliency_outputs(x)
            sals.append(sal)
            if sal_prob is not None:
                sal_probs.append(sal_prob)

    def joined(parts: list[np.ndarray]) -> np.ndarray | None:
        return np.concatenate(parts) if parts else None

    return _Outputs(joined(probs), joined(cams), joined(segs), joined(sals), joined(sal_probs))


def measure(
    reference: CascadeModels,
    candidate: CascadeModels,
    images: ImageSet,
    thresholds: Thresholds,
    *,
    roles: tuple[str, ...] = ROLES,
    tta: bool = True,
    batch: int = 8,
) -> dict[str, dict[str, Any]]:
    """Parity figures per model role in ``roles`` (see the module docstring); nothing is judged here."""
    ref, got = _run(reference, images, roles, tta, batch), _run(candidate, images, roles, tta, batch)
    n = len(images.items)
    out: dict[str, dict[str, Any]] = {}
    if ref.prob is not None and got.prob is not None:
        gate_ref, gate_got = ref.prob >= thresholds.gate, got.prob >= thresholds.gate
        out["classifier"] = {
            "images": n,
            "max_abs_diff": {"probability": float(np.abs(ref.prob - got.prob).max())},
            "gate_mismatches": int((gate_ref != gate_got).sum()),
            "gate_agreement": float((gate_ref == gate_got).mean()),
        }
        if ref.cam is not None and got.cam is not None:
            out["classifier"]["max_abs_diff"]["cam"] = float(np.abs(ref.cam - got.cam).max())
    if ref.seg is not None and got.seg is not None:
        masks_ref = [triplet_mask(p, thresholds) for p in ref.seg]
        masks_got = [triplet_mask(p, thresholds) for p in got.seg]
        differ = [int((a != b).sum()) for a, b in zip(masks_ref, masks_got, strict=True)]
        out["segmenter"] = {
            "images": n,
            "max_abs_diff": {"probability": float(np.abs(ref.seg - got.seg).max())},
            "mask_mismatches": int(sum(d > 0 for d in differ)),
            # images whose decision (an empty mask or not) differs: what a reader of the worklist sees
            "mask_decision_mismatches": int(
                sum(bool(a.any()) != bool(b.any()) for a, b in zip(masks_ref, masks_got, strict=True))
            ),
            "mask_pixels_differing": int(sum(differ)),
            "non_empty_masks": int(sum(bool(m.any()) for m in masks_ref)),
            "mask_dice": float(np.mean([_dice(a, b) for a, b in zip(masks_ref, masks_got, strict=True)])),
        }
    if ref.sal is not None and got.sal is not None:
        out["saliency"] = {"images": n, "max_abs_diff": {"map": float(np.abs(ref.sal - got.sal).max())}}
        if ref.sal_prob is not None and got.sal_prob is not None:
            diff = float(np.abs(ref.sal_prob - got.sal_prob).max())
            out["saliency"]["max_abs_diff"]["probability"] = diff
    return out


def judge(figures: dict[str, Any], role: str, precision: str, where: str) -> dict[str, Any]:
    """Add ``tolerance`` and ``passed`` to one model's figures; ExportError naming the model + figure."""
    tol = tolerance_for(precision)
    failures: list[str] = []
    for name, value in figures["max_abs_diff"].items():
        limit = float(tol["probability"] if name == "probability" else tol["map"])
        if not value <= limit:  # also NaN
            failures.append(f"max |Δ {name}| = {value:.3g} > {limit:g}")
    identical = tol["decisions"] == "identical"
    if identical and role == "classifier" and figures["gate_mismatches"]:
        failures.append(f"{figures['gate_mismatches']} of {figures['images']} gate decisions differ")
    if identical and role == "segmenter" and figures["mask_mismatches"]:
        failures.append(
            f"{figures['mask_mismatches']} of {figures['images']} triplet masks differ "
            f"({figures['mask_pixels_differing']} pixels)"
        )
    figures = {**figures, "tolerance": tol, "passed": not failures}
    if failures:
        raise ExportError(f"parity check failed for the {role} ({precision}, {where}): {'; '.join(failures)}")
    return figures
