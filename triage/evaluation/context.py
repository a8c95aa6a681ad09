"""What report sections share: the predictions, the thresholds, per-image overlap counts under a decision
rule, bootstrap confidence intervals, and the section contract (``Section``: ``Context -> SectionOutput``).

Per-image counts (intersection, predicted area, true area, on the segmenter's grid) give every
segmentation metric of :mod:`triage.metrics` without keeping masks: Dice per image (1 when both are empty),
pooled Dice and pooled IoU over the data set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from triage import metrics
from triage.bundle import Thresholds
from triage.cascade.postprocess import triplet_mask
from triage.evaluation.models import Cascade
from triage.evaluation.predictions import Predictions

Gate = Literal["model", "none", "oracle"]
FloatArray = NDArray[np.float64]


@dataclass
class SectionOutput:
    """What a report section returns: its title, its Markdown, its data for report.json, its figures."""

    title: str
    markdown: str
    data: dict[str, Any] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)  # file names in the report folder


@dataclass(frozen=True)
class EvalOptions:
    bootstrap: int = 1000  # resamples for the confidence intervals (0: none)
    level: float = 0.95
    seed: int = 0
    overlays: int = 4  # tiles per overlay group
    tile: int = 320


@dataclass(frozen=True)
class Counts:
    """Per image: |pred ∩ truth|, |pred|, |truth| (pixels of the segmenter grid) and whether it was gated."""

    inter: FloatArray
    pred: FloatArray
    truth: FloatArray
    gated: NDArray[np.bool_]

    def dice_per_image(self) -> FloatArray:
        denom = self.pred + self.truth
        out: FloatArray = np.where(denom == 0, 1.0, 2.0 * self.inter / np.maximum(denom, 1.0))
        return out

    def iou_per_image(self) -> FloatArray:
        union = self.pred + self.truth - self.inter
        out: FloatArray = np.where(union == 0, 1.0, self.inter / np.maximum(union, 1.0))
        return out

    def pooled_dice(self, idx: NDArray[np.intp] | slice = slice(None)) -> float:
        denom = float(self.pred[idx].sum() + self.truth[idx].sum())
        return 1.0 if denom == 0 else 2.0 * float(self.inter[idx].sum()) / denom

    def pooled_iou(self, idx: NDArray[np.intp] | slice = slice(None)) -> float:
        union = float(self.pred[idx].sum() + self.truth[idx].sum() - self.inter[idx].sum())
        return 1.0 if union == 0 else float(self.inter[idx].sum()) / union


def bootstrap_ci(
    stat: Callable[[NDArray[np.intp]], float], n: int, options: EvalOptions, salt: int = 0
) -> tuple[float, float] | None:
    """Percentile interval of ``stat(indices)`` over ``options.bootstrap`` resamples of n items; None if
    resampling is off or the statistic was undefined (NaN) in more than half of the resamples."""
    if options.bootstrap <= 0 or n == 0:
        return None
    rng = np.random.default_rng([options.seed, salt])
    values = np.array([stat(rng.integers(0, n, n)) for _ in range(options.bootstrap)], np.float64)
    values = values[np.isfinite(values)]
    if len(values) < options.bootstrap / 2:
        return None
    alpha = (1 - options.level) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


def auc_or_nan(scores: FloatArray, labels: NDArray[Any]) -> float:
    y = np.asarray(labels) > 0
    if y.all() or not y.any():
        return float("nan")
    return metrics.roc_auc(scores, y)


@dataclass
class Context:
    cascade: Cascade
    predictions: Predictions
    thresholds: Thresholds
    out: Path
    options: EvalOptions = field(default_factory=EvalOptions)
    data: Path = Path(".")
    _cache: dict[Any, Counts] = field(default_factory=dict)

    @property
    def has_classifier(self) -> bool:
        return self.cascade.classifier is not None

    @property
    def has_segmenter(self) -> bool:
        return self.cascade.segmenter is not None and self.predictions.seg is not None

    def gate_mask(self, gate: Gate, threshold: float | None = None) -> NDArray[np.bool_]:
        p = self.predictions
        if gate == "none" or (not self.has_classifier and gate == "model"):
            return np.ones(len(p), bool)
        if gate == "oracle":
            return p.labels > 0
        out: NDArray[np.bool_] = p.probability >= (self.thresholds.gate if threshold is None else threshold)
        return out

    def counts(self, thresholds: Thresholds | None = None, gate: Gate = "model") -> Counts:
        """Per-image counts of the cascade under ``thresholds`` (default: the model's) and ``gate``."""
        th = thresholds or self.thresholds
        key = (th.gate, th.top, th.min_area, th.bottom, th.min_component, gate)
        if key not in self._cache:
            p = self.predictions
            assert p.seg is not None
            gated = self.gate_mask(gate, th.gate)
            n = len(p)
            inter, pred, truth = np.zeros(n), np.zeros(n), np.zeros(n)
            for i in range(n):
                t = p.truth(i)
                truth[i] = t.sum()
                if gated[i]:
                    m = triplet_mask(np.asarray(p.seg[i], np.float32), th)
                    pred[i] = m.sum()
                    inter[i] = (m & t).sum()
            self._cache[key] = Counts(inter, pred, truth, gated)
        return self._cache[key]

    def ci(
        self, stat: Callable[[NDArray[np.intp]], float], n: int, salt: int = 0
    ) -> tuple[float, float] | None:
        return bootstrap_ci(stat, n, self.options, salt)


def fmt(value: float, ci: tuple[float, float] | None = None, digits: int = 3) -> str:
    if not np.isfinite(value):
        return "–"
    text = f"{value:.{digits}f}"
    return f"{text} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else text


Section = Callable[["Context"], SectionOutput]  # a report section (triage/evaluation/sections.py)
