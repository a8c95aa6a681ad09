"""Segmentation and classification metrics (numpy only).

Segmentation metrics take stacks of bool masks, shape (N, H, W); pass
``mask[None]`` for a single image. Probabilities must be thresholded first:
non-bool masks are rejected so that a float map is never silently binarised at 0.

Conventions (SIIM-ACR): per-image Dice/IoU is 1.0 when prediction and truth are
both empty, 0.0 when exactly one is empty. Classification metrics call a case
positive when ``score >= threshold``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import rankdata

__all__ = [
    "SensSpec",
    "dice_per_image",
    "iou",
    "iou_per_image",
    "mean_dice_per_image",
    "pooled_dice",
    "roc_auc",
    "roc_curve",
    "sensitivity_specificity",
]

FloatArray = NDArray[np.float64]


def _check_masks(pred: NDArray[np.bool_], truth: NDArray[np.bool_], *, stack: bool) -> None:
    for name, arr in (("pred", pred), ("truth", truth)):
        if arr.dtype != np.bool_:
            raise TypeError(f"{name} must be a bool mask, got dtype {arr.dtype}; threshold it first")
    if pred.shape != truth.shape:
        raise ValueError(f"pred shape {pred.shape} differs from truth shape {truth.shape}")
    if stack and pred.ndim != 3:
        raise ValueError(f"masks must be stacks of shape (N, H, W), got {pred.shape}; use mask[None]")


def _per_image_counts(
    pred: NDArray[np.bool_], truth: NDArray[np.bool_]
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Return |A∩B|, |A|, |B| per image, each (N,) float64."""
    _check_masks(pred, truth, stack=True)
    inter = np.count_nonzero(pred & truth, axis=(1, 2)).astype(np.float64)
    n_pred = np.count_nonzero(pred, axis=(1, 2)).astype(np.float64)
    n_truth = np.count_nonzero(truth, axis=(1, 2)).astype(np.float64)
    return inter, n_pred, n_truth


def dice_per_image(pred: NDArray[np.bool_], truth: NDArray[np.bool_]) -> FloatArray:
    """Dice 2|A∩B| / (|A|+|B|) of each image; (N, H, W) bool -> (N,) float64.

    1.0 when both masks of an image are empty, 0.0 when exactly one is.
    """
    inter, n_pred, n_truth = _per_image_counts(pred, truth)
    denom = n_pred + n_truth
    return np.where(denom == 0, 1.0, 2.0 * inter / np.maximum(denom, 1.0))


def mean_dice_per_image(pred: NDArray[np.bool_], truth: NDArray[np.bool_]) -> float:
    """Mean of :func:`dice_per_image` over the stack (the SIIM-ACR competition metric).

    Raises:
        ValueError: for an empty stack (N = 0).
    """
    if pred.shape[:1] == (0,):
        raise ValueError("mean Dice of an empty stack (N = 0) is undefined")
    return float(dice_per_image(pred, truth).mean())


def pooled_dice(pred: NDArray[np.bool_], truth: NDArray[np.bool_]) -> float:
    """Dice over all pixels of the stack pooled together; any equal shapes.

    1.0 when both are entirely empty.
    """
    _check_masks(pred, truth, stack=False)
    denom = np.count_nonzero(pred) + np.count_nonzero(truth)
    return 1.0 if denom == 0 else 2.0 * np.count_nonzero(pred & truth) / denom


def iou_per_image(pred: NDArray[np.bool_], truth: NDArray[np.bool_]) -> FloatArray:
    """Jaccard |A∩B| / |A∪B| of each image; (N, H, W) bool -> (N,) float64.

    1.0 when both masks of an image are empty, 0.0 when exactly one is.
    """
    inter, n_pred, n_truth = _per_image_counts(pred, truth)
    union = n_pred + n_truth - inter
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1.0))


def iou(pred: NDArray[np.bool_], truth: NDArray[np.bool_]) -> float:
    """Jaccard over all pixels pooled together; any equal shapes. 1.0 when both are empty."""
    _check_masks(pred, truth, stack=False)
    union = np.count_nonzero(pred | truth)
    return 1.0 if union == 0 else np.count_nonzero(pred & truth) / union


def _check_scores(scores: ArrayLike, labels: ArrayLike) -> tuple[FloatArray, NDArray[np.bool_]]:
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if s.ndim != 1 or s.shape != y.shape:
        raise ValueError(f"scores and labels must be 1-D of equal length, got shapes {s.shape} and {y.shape}")
    if np.isnan(s).any():
        raise ValueError(f"scores contain {int(np.isnan(s).sum())} NaN value(s)")
    if y.dtype != np.bool_:
        bad = ~np.isin(y, (0, 1))
        if bad.any():
            raise ValueError(f"labels must be bool or 0/1, got value {y[bad][0].item()!r}")
    return s, y.astype(np.bool_)


def roc_auc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve via the Mann–Whitney U statistic.

    AUC = (R+ - n+(n+ + 1)/2) / (n+ n-), with R+ the sum of the average ranks of
    the positives; tied scores count one half.

    Args:
        scores: (N,) real scores, higher = more likely positive.
        labels: (N,) bool or 0/1.

    Raises:
        ValueError: when only one class is present, or for bad shapes/values.
    """
    s, y = _check_scores(scores, labels)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUC needs both classes; got {n_pos} positive(s) and {n_neg} negative(s)")
    ranks = rankdata(s)  # average ranks for ties
    u = float(ranks[y].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


@dataclass(frozen=True)
class SensSpec:
    """Confusion counts at one threshold; sensitivity/specificity are NaN when undefined."""

    sensitivity: float
    specificity: float
    tp: int
    fp: int
    tn: int
    fn: int


def sensitivity_specificity(scores: ArrayLike, labels: ArrayLike, threshold: float) -> SensSpec:
    """Sensitivity TP/(TP+FN) and specificity TN/(TN+FP), calling ``score >= threshold`` positive.

    Sensitivity is NaN without positives, specificity NaN without negatives.
    """
    s, y = _check_scores(scores, labels)
    called = s >= threshold
    tp = int(np.count_nonzero(called & y))
    fp = int(np.count_nonzero(called & ~y))
    fn = int(np.count_nonzero(~called & y))
    tn = int(np.count_nonzero(~called & ~y))
    sens = tp / (tp + fn) if tp + fn else float("nan")
    spec = tn / (tn + fp) if tn + fp else float("nan")
    return SensSpec(sensitivity=sens, specificity=spec, tp=tp, fp=fp, tn=tn, fn=fn)


def roc_curve(scores: ArrayLike, labels: ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
    """ROC curve at every distinct score.

    Returns:
        fpr, tpr, thresholds: each (K + 1,) float64 for K distinct scores.
        ``thresholds`` is decreasing and starts with +inf (nothing called
        positive, the point (0, 0)); point i holds the rates for
        ``score >= thresholds[i]``, ending at (1, 1).

    Raises:
        ValueError: when only one class is present.
    """
    s, y = _check_scores(scores, labels)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"ROC needs both classes; got {n_pos} positive(s) and {n_neg} negative(s)")
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    y_sorted = y[order]
    # Last index of each run of equal scores: everything up to it is called positive.
    last = np.flatnonzero(np.r_[s_sorted[1:] != s_sorted[:-1], True])
    tps = np.cumsum(y_sorted)[last].astype(np.float64)
    fps = (last + 1) - tps
    fpr = np.r_[0.0, fps / n_neg]
    tpr = np.r_[0.0, tps / n_pos]
    thresholds = np.r_[np.inf, s_sorted[last]]
    return fpr, tpr, thresholds
