"""Paired comparisons of the cascade's arms on the same out-of-fold images (``triage experiment``).

Every arm is scored per image (Dice per image, 1 when prediction and truth are both empty) with
thresholds chosen on the *other* folds' out-of-fold predictions (nested, as the table). Two arms on the
same images give per-image differences; their mean, and a percentile bootstrap interval that resamples
images (the pair stays together), say whether one arm beats the other beyond the noise of which images
were drawn. With several training seeds, an image's Dice is first averaged over the seeds (seed noise is
averaged out, not counted as images), and each seed's own mean difference is listed beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from training.thresholds import CascadeOOF
from triage.bundle import Thresholds
from triage.cascade.postprocess import triplet_mask

FloatArray = NDArray[np.float64]


def dice_per_image(oof: CascadeOOF, gate: NDArray[np.bool_], th: Thresholds, tta: bool) -> FloatArray:
    """Per image of ``oof``: Dice of the triplet mask (empty where the gate is closed) against the truth."""
    maps = oof.seg_tta if tta else oof.seg
    out = np.ones(len(oof.ids))
    for i in range(len(oof.ids)):
        t = np.asarray(oof.truth[i]) > 0
        m = triplet_mask(np.asarray(maps[i], np.float32), th) if gate[i] else np.zeros_like(t)
        denom = int(m.sum() + t.sum())
        out[i] = 1.0 if denom == 0 else 2.0 * float((m & t).sum()) / denom
    return out


def nested_dice(
    oof: CascadeOOF,
    row: str,
    gate_kind: str,
    thresholds_for: Callable[[str, CascadeOOF, str], dict[str, Any]],
    gate_for: Callable[[CascadeOOF, str, dict[str, Any], bool], NDArray[np.bool_]],
    to_thresholds: Callable[[dict[str, Any]], Thresholds],
) -> dict[str, float]:
    """Image id → Dice per image, each fold scored with thresholds chosen on the other folds."""
    out: dict[str, float] = {}
    tta = row not in ("argmax", "threshold")
    for k in sorted(set(oof.folds.tolist())):
        held = oof.subset(np.flatnonzero(oof.folds == k))
        rest = oof.subset(np.flatnonzero(oof.folds != k))
        th = thresholds_for(row, rest, gate_kind)
        dice = dice_per_image(held, gate_for(held, gate_kind, th, tta), to_thresholds(th), tta)
        out.update(zip(held.ids, dice.tolist(), strict=True))
    return out


def paired_difference(
    a: Sequence[dict[str, float]],
    b: Sequence[dict[str, float]],
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Arm a − arm b, per image: ``a`` and ``b`` hold one id → Dice mapping per training seed.

    Returns the mean difference over images (Dice averaged over seeds first), its percentile bootstrap
    interval over images, each seed's mean difference, and the share of resamples where a − b > 0."""
    ids = sorted(set.intersection(*(set(m) for m in (*a, *b))))
    if not ids:
        raise ValueError("the two arms share no out-of-fold images")
    da = np.array([[m[i] for i in ids] for m in a]).mean(axis=0)
    db = np.array([[m[i] for i in ids] for m in b]).mean(axis=0)
    diff = da - db
    rng = np.random.default_rng(seed)
    boot = np.array([diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(resamples)])
    alpha = (1 - level) / 2
    return {
        "mean": float(diff.mean()),
        "ci": [float(np.quantile(boot, alpha)), float(np.quantile(boot, 1 - alpha))],
        "share_of_resamples_above_zero": float((boot > 0).mean()),
        "per_seed": [float(np.mean([x[i] - y[i] for i in ids])) for x, y in zip(a, b, strict=True)],
        "images": len(ids),
        "seeds": len(a),
        "level": level,
        "resamples": resamples,
    }


def verdict(d: dict[str, Any]) -> str:
    """The finding in words the interval supports."""
    lo, hi = d["ci"]
    if lo > 0:
        return "better (the interval excludes zero)"
    if hi < 0:
        return "worse (the interval excludes zero)"
    return "no difference shown (the interval includes zero)"
