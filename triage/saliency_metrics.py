"""Saliency-map metrics (numpy + scipy only, usable by the runtime and by ``triage evaluate``).

A *map* H is a non-negative float array (H, W) — a CAM, a HiResCAM / Grad-CAM map or a saliency model's
output; a *region* M is a bool array of the same shape (the lung fields, the pneumothorax mask, a chest
drain); a *target* T is a non-negative reference map (a reading heatmap, eye-gaze fixations). Maps of a
different resolution are brought to the region's grid with :func:`fit_map` (bilinear) first.

Localisation against a region (seeds.md B and D):

* :func:`mass_inside` — Σ H·M / Σ H, the fraction of the map's mass inside the region (the heatmap-loss
  paper's headline number; a uniform map scores area(M)/area(image)).
* :func:`inside_outside_diff` — "Diff" = mean(H inside M) − mean(H outside M), for H in [0, 1].
* :func:`ehr_curve`, :func:`ehr_auc` — energy-based hit rate EHR(t) = area(H ≥ t ∩ M) / area(H ≥ t) at
  equidistant thresholds t_k = k/K, k = 1..K, of a map scaled to [0, 1] by its maximum; a threshold no
  pixel reaches scores 0. EHR-AUC = mean over the K thresholds (the Riemann sum of the curve on [0, 1]).
* :func:`pointing_game` — a hit when the map's maximum (the first, in row-major order) lies in the region,
  optionally dilated by ``tolerance_px`` (chessboard distance).

Agreement with a target map (MIT saliency benchmark conventions; both maps divided by their sums):

* :func:`kl_divergence` — KL(T ‖ H) = Σ T log(T / (H + ε)), ε = 1e-7 (lower is better).
* :func:`pearson_cc` — Pearson correlation of the two maps (higher is better, ≤ 1).
* :func:`similarity` — SIM = Σ min(P, Q), the histogram intersection (1 for identical maps).

Groups of models (the shortcut experiment): :func:`compare_groups` gives the two-sided Mann–Whitney U
test (``scipy.stats.mannwhitneyu``) and two effect sizes: the common-language effect size
CLES = U_a / (n_a·n_b) = P(a > b) + ½·P(a = b), the rank-biserial correlation 2·CLES − 1 and Cohen's d
(difference of means over the pooled SD; the source reports it beside CLES).

Undefined values (a map with no mass, an empty region) are NaN rather than an exception, so that a batch
of images can be averaged with ``np.nanmean``; wrong shapes or dtypes raise ValueError naming them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from PIL import Image
from scipy import ndimage
from scipy.stats import mannwhitneyu

__all__ = [
    "GroupComparison",
    "compare_groups",
    "ehr_auc",
    "ehr_curve",
    "fit_map",
    "inside_outside_diff",
    "kl_divergence",
    "map_scores",
    "mass_inside",
    "pearson_cc",
    "pointing_game",
    "similarity",
]

FloatMap = NDArray[np.float64]
KL_EPS = 1e-7
EHR_THRESHOLDS = 100


def _as_map(name: str, saliency: ArrayLike) -> FloatMap:
    h = np.asarray(saliency)
    if (
        h.ndim != 2
        or min(h.shape) < 1
        or not (np.issubdtype(h.dtype, np.floating) or np.issubdtype(h.dtype, np.integer))
    ):
        raise ValueError(f"{name} must be a numeric 2-D array, got {h.dtype} with shape {h.shape}")
    out = h.astype(np.float64)
    if not np.isfinite(out).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    if out.min() < 0:
        raise ValueError(f"{name} has negative values (min {out.min():.3g}); apply ReLU first")
    return out


def _as_region(region: ArrayLike, shape: tuple[int, ...]) -> NDArray[np.bool_]:
    m = np.asarray(region)
    if m.dtype != np.bool_:
        raise ValueError(f"region must be a bool mask, got dtype {m.dtype}")
    if m.shape != shape:
        raise ValueError(f"region shape {m.shape} differs from the map's {shape}; use fit_map first")
    return m


def fit_map(saliency: ArrayLike, shape: tuple[int, int]) -> FloatMap:
    """``saliency`` (h, w) resized bilinearly to ``shape`` = (H, W) (any ratio), clipped at 0."""
    h = _as_map("saliency", saliency)
    if h.shape == tuple(shape):
        return h
    img = Image.fromarray(h.astype(np.float32), mode="F").resize(
        (shape[1], shape[0]), Image.Resampling.BILINEAR
    )
    return np.maximum(np.asarray(img, dtype=np.float64), 0.0)


def mass_inside(saliency: ArrayLike, region: ArrayLike) -> float:
    """Σ H·M / Σ H; NaN when the map has no mass."""
    h = _as_map("saliency", saliency)
    m = _as_region(region, h.shape)
    total = float(h.sum())
    return float(h[m].sum()) / total if total > 0 else float("nan")


def inside_outside_diff(saliency: ArrayLike, region: ArrayLike) -> float:
    """mean(H inside M) − mean(H outside M) ("Diff"); NaN when M is empty or covers everything."""
    h = _as_map("saliency", saliency)
    m = _as_region(region, h.shape)
    if not m.any() or m.all():
        return float("nan")
    return float(h[m].mean() - h[~m].mean())


def ehr_curve(
    saliency: ArrayLike, region: ArrayLike, thresholds: int = EHR_THRESHOLDS
) -> tuple[FloatMap, FloatMap]:
    """(t, EHR(t)) at t_k = k/K, k = 1..K, for the map scaled to [0, 1] by its maximum (see the module)."""
    if thresholds < 1:
        raise ValueError(f"thresholds must be at least 1, got {thresholds}")
    h = _as_map("saliency", saliency)
    m = _as_region(region, h.shape)
    t = np.arange(1, thresholds + 1, dtype=np.float64) / thresholds
    peak = float(h.max())
    if peak <= 0:
        return t, np.zeros_like(t)
    values = (h / peak).ravel()
    order = np.argsort(-values, kind="stable")
    ranked, inside = values[order], m.ravel()[order]
    hits = np.concatenate([[0], np.cumsum(inside)])
    # pixels with value >= t: the first n of the descending order
    n = np.searchsorted(-ranked, -t, side="right")
    ehr = np.where(n > 0, hits[n] / np.maximum(n, 1), 0.0)
    return t, ehr.astype(np.float64)


def ehr_auc(saliency: ArrayLike, region: ArrayLike, thresholds: int = EHR_THRESHOLDS) -> float:
    """Mean of :func:`ehr_curve` (the area under it on [0, 1]); NaN for an empty region."""
    h = _as_map("saliency", saliency)
    if not _as_region(region, h.shape).any():
        return float("nan")
    return float(ehr_curve(h, region, thresholds)[1].mean())


def pointing_game(saliency: ArrayLike, region: ArrayLike, tolerance_px: int = 0) -> float:
    """1.0 if the map's (first) maximum lies in the region or within ``tolerance_px`` pixels of it
    (chessboard distance), else 0.0; NaN
    for an empty region or a map without mass."""
    h = _as_map("saliency", saliency)
    m = _as_region(region, h.shape)
    if not m.any() or float(h.max()) <= 0:
        return float("nan")
    if tolerance_px > 0:
        m = ndimage.binary_dilation(m, structure=np.ones((3, 3), bool), iterations=int(tolerance_px))
    y, x = np.unravel_index(int(np.argmax(h)), h.shape)
    return float(m[y, x])


def _distributions(saliency: ArrayLike, target: ArrayLike) -> tuple[FloatMap, FloatMap] | None:
    h = _as_map("saliency", saliency)
    t = _as_map("target", target)
    if h.shape != t.shape:
        raise ValueError(f"target shape {t.shape} differs from the map's {h.shape}; use fit_map first")
    if h.sum() <= 0 or t.sum() <= 0:
        return None
    return h / h.sum(), t / t.sum()


def kl_divergence(saliency: ArrayLike, target: ArrayLike) -> float:
    """KL(T ‖ H) of the sum-normalised maps, Σ T log(T / (H + ε)); NaN when either has no mass."""
    pair = _distributions(saliency, target)
    if pair is None:
        return float("nan")
    q, p = pair
    keep = p > 0
    return float(np.sum(p[keep] * np.log(p[keep] / (q[keep] + KL_EPS))))


def pearson_cc(saliency: ArrayLike, target: ArrayLike) -> float:
    """Pearson correlation coefficient of the two maps; NaN when either is constant."""
    h = _as_map("saliency", saliency).ravel()
    t = _as_map("target", target).ravel()
    if h.shape != t.shape:
        raise ValueError(f"target has {t.size} pixels, the map {h.size}; use fit_map first")
    hs, ts = h.std(), t.std()
    if hs == 0 or ts == 0:
        return float("nan")
    return float(np.mean((h - h.mean()) * (t - t.mean())) / (hs * ts))


def similarity(saliency: ArrayLike, target: ArrayLike) -> float:
    """SIM = Σ min(P, Q) of the sum-normalised maps, in [0, 1]; NaN when either has no mass."""
    pair = _distributions(saliency, target)
    if pair is None:
        return float("nan")
    return float(np.minimum(*pair).sum())


def map_scores(
    saliency: ArrayLike, region: ArrayLike | None = None, target: ArrayLike | None = None
) -> dict[str, float]:
    """Every metric that applies: region metrics when ``region`` is given, target metrics when ``target``
    is; the map is first fitted to the region's (else the target's) shape."""
    h = _as_map("saliency", saliency)
    scores: dict[str, float] = {}
    if region is not None:
        m = np.asarray(region)
        hr = fit_map(h, (m.shape[0], m.shape[1])) if m.ndim == 2 else h
        scores.update(
            mass_inside=mass_inside(hr, m),
            diff=inside_outside_diff(hr / max(float(hr.max()), 1e-12), m),
            ehr_auc=ehr_auc(hr, m),
            pointing_game=pointing_game(hr, m),
        )
    if target is not None:
        t = _as_map("target", target)
        ht = fit_map(h, (t.shape[0], t.shape[1]))
        scores.update(kl=kl_divergence(ht, t), cc=pearson_cc(ht, t), sim=similarity(ht, t))
    return scores


@dataclass(frozen=True)
class GroupComparison:
    """Two groups of per-model values (e.g. mass inside the lungs of 5 CE and 5 heatmap-loss models)."""

    n_a: int
    n_b: int
    median_a: float
    median_b: float
    u: float  # Mann–Whitney U of group a
    p_value: float  # two-sided
    cles: float  # U / (n_a n_b) = P(a > b) + P(a = b)/2
    rank_biserial: float  # 2·CLES − 1, in [−1, 1]
    cohen_d: float  # (mean a − mean b) / pooled SD; NaN with fewer than 2 values a group or zero spread

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_groups(a: ArrayLike, b: ArrayLike) -> GroupComparison:
    """Two-sided Mann–Whitney U test of ``a`` vs ``b`` and effect sizes; ValueError for an empty group
    or NaN values."""
    xa = np.asarray(a, dtype=np.float64).ravel()
    xb = np.asarray(b, dtype=np.float64).ravel()
    if len(xa) == 0 or len(xb) == 0:
        raise ValueError(f"both groups need at least one value, got {len(xa)} and {len(xb)}")
    if not (np.isfinite(xa).all() and np.isfinite(xb).all()):
        raise ValueError("group values must be finite (drop NaN first)")
    result = mannwhitneyu(xa, xb, alternative="two-sided", method="auto")
    u = float(result.statistic)
    cles = u / (len(xa) * len(xb))
    return GroupComparison(
        n_a=len(xa),
        n_b=len(xb),
        median_a=float(np.median(xa)),
        median_b=float(np.median(xb)),
        u=u,
        p_value=float(result.pvalue),
        cles=cles,
        rank_biserial=2.0 * cles - 1.0,
        cohen_d=_cohen_d(xa, xb),
    )


def _cohen_d(xa: FloatMap, xb: FloatMap) -> float:
    """(mean a − mean b) / pooled SD (ddof 1), the source's second effect size."""
    na, nb = len(xa), len(xb)
    if na < 2 or nb < 2:
        return float("nan")
    pooled = ((na - 1) * xa.var(ddof=1) + (nb - 1) * xb.var(ddof=1)) / (na + nb - 2)
    if pooled <= 0:
        return float("nan")
    return float((xa.mean() - xb.mean()) / np.sqrt(pooled))
