"""Triplet thresholding and small-component removal (the SIIM-ACR winners' post-processing).

Given a probability map p on the model grid: if fewer than `min_area` pixels have p > `top`, the mask is
empty; otherwise mask = p > `bottom`, and 8-connected components smaller than `min_component` pixels
are removed.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from triage.bundle import Thresholds

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
