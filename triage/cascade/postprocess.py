"""From the models' outputs to the decision: triplet thresholding, small-component removal (the SIIM-ACR
winners' post-processing), the mask on the source grid, positive and priority.

Given a probability map p on the model grid: if fewer than `min_area` pixels have p > `top`, the mask is
empty; otherwise mask = p > `bottom`, and 8-connected components smaller than `min_component` pixels
are removed. An image is positive when the gate passed it and its mask, mapped back to the source pixel
grid, is not empty. Pure functions: no files, no models (writing is ``triage/cascade/write.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from triage.bundle import Thresholds
from triage.cascade.preprocess import Geometry, to_source

_EIGHT = np.ones((3, 3), bool)


def triplet_mask(prob: NDArray[np.float32], th: Thresholds) -> NDArray[np.bool_]:
    """(H, W) probabilities → (H, W) bool mask on the same grid."""
    if int((prob > th.top).sum()) < th.min_area:
        return np.zeros(prob.shape, bool)
    mask = prob > th.bottom
    if th.min_component > 1 and mask.any():
        labels, n = ndimage.label(mask, structure=_EIGHT)
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        keep = sizes >= th.min_component
        keep[0] = False
        mask = keep[labels]
    return mask


@dataclass(frozen=True)
class Decision:
    """What the cascade decided about one image.

    mask: (rows, columns) bool on the source pixel grid; empty unless ``positive``.
    priority: the worklist's sort key, probability + 1 when positive (positives first, then by P).
    """

    probability: float
    gated: bool
    positive: bool
    mask: NDArray[np.bool_]
    area_px: int
    area_mm2: float | None

    @property
    def priority(self) -> float:
        return self.probability + (1.0 if self.positive else 0.0)


def decide(
    probability: float,
    gated: bool,
    seg_prob: NDArray[np.float32] | None,
    geometry: Geometry | None,
    shape: tuple[int, int],
    spacing_mm: tuple[float, float] | None,
    thresholds: Thresholds,
) -> Decision:
    """The decision for one image.

    probability: the classifier's P(positive); gated: whether it passed the gate threshold.
    seg_prob: (H, W) the segmenter's probabilities on its grid (None when not gated), placed in the
        source image as ``geometry`` says. shape: (rows, columns) of the source grid.
    spacing_mm: (row, column) pixel spacing, for the area in mm² (None when the file has none).
    """
    mask = np.zeros(shape, bool)
    if gated and seg_prob is not None and geometry is not None:
        grid_mask = triplet_mask(seg_prob, thresholds)
        if grid_mask.any():
            mask = to_source(grid_mask.astype(np.float32), geometry) >= 0.5
    area = int(mask.sum())
    area_mm2 = round(area * spacing_mm[0] * spacing_mm[1], 1) if spacing_mm else None
    return Decision(float(probability), bool(gated), area > 0, mask, area, area_mm2)
