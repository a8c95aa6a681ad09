from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from triage.metrics import (
    SensSpec,
    dice_per_image,
    iou,
    iou_per_image,
    mean_dice_per_image,
    pooled_dice,
    roc_auc,
    roc_curve,
    sensitivity_specificity,
)


def _masks(rows: list[str]) -> np.ndarray:
    return np.array([[c == "#" for c in r] for r in rows], dtype=bool)


# Image 0: pred is the top-left 2x2 block (4 px), truth the 2x2 block one column right (4 px);
#          overlap = column 1, rows 0..1 = 2 px -> Dice 2*2/(4+4) = 0.5, IoU 2/(4+4-2) = 1/3.
# Image 1: both empty -> Dice 1, IoU 1.
# Image 2: pred one pixel, truth empty -> 0.
# Image 3: pred empty, truth three pixels -> 0.
EMPTY = ["....", "....", "....", "...."]
PRED = np.stack(
    [
        _masks(["##..", "##..", "....", "...."]),
        _masks(EMPTY),
        _masks(["....", "..#.", "....", "...."]),
        _masks(EMPTY),
    ]
)
TRUTH = np.stack(
    [
        _masks([".##.", ".##.", "....", "...."]),
        _masks(EMPTY),
        _masks(EMPTY),
        _masks(["....", "....", "###.", "...."]),
    ]
)


def test_dice_per_image_hand_computed() -> None:
    np.testing.assert_allclose(dice_per_image(PRED, TRUTH), [0.5, 1.0, 0.0, 0.0])


def test_mean_dice_per_image() -> None:
    assert mean_dice_per_image(PRED, TRUTH) == pytest.approx((0.5 + 1.0 + 0.0 + 0.0) / 4)


def test_pooled_dice() -> None:
    # |A∩B| = 2, |A| = 4 + 0 + 1 + 0 = 5, |B| = 4 + 0 + 0 + 3 = 7 -> 2*2/12 = 1/3.
    assert pooled_dice(PRED, TRUTH) == pytest.approx(1 / 3)
    empty = np.zeros((2, 4, 4), dtype=bool)
    assert pooled_dice(empty, empty) == 1.0


def test_iou() -> None:
    np.testing.assert_allclose(iou_per_image(PRED, TRUTH), [1 / 3, 1.0, 0.0, 0.0])
    # union = 5 + 7 - 2 = 10 -> 2/10.
    assert iou(PRED, TRUTH) == pytest.approx(0.2)
    empty = np.zeros((1, 4, 4), dtype=bool)
    assert iou(empty, empty) == 1.0


def test_mask_validation() -> None:
    with pytest.raises(TypeError, match=r"float64.*threshold"):
        dice_per_image(PRED.astype(float), TRUTH)
    with pytest.raises(ValueError, match=r"\(4, 4, 4\) differs from truth shape \(3, 4, 4\)"):
        dice_per_image(PRED, TRUTH[:3])
    with pytest.raises(ValueError, match=r"\(N, H, W\).*mask\[None\]"):
        dice_per_image(PRED[0], TRUTH[0])
    with pytest.raises(ValueError, match="empty stack"):
        mean_dice_per_image(PRED[:0], TRUTH[:0])


# Scores with ties. Positives: 0.4, 0.8, 0.4; negatives: 0.1, 0.4.
# Pairs (pos > neg = 1, tie = 1/2): 0.4 vs {0.1, 0.4} = 1.5; 0.8 vs both = 2; 0.4 vs both = 1.5 -> 5/6.
# Rank check: ranks 1 (0.1), 3 3 3 (the three 0.4s), 5 (0.8); positive ranks 3+5+3 = 11; (11 - 6)/6 = 5/6.
SCORES = [0.1, 0.4, 0.4, 0.8, 0.4]
LABELS = [0, 0, 1, 1, 1]


def test_roc_auc_with_ties_hand_computed() -> None:
    assert roc_auc(SCORES, LABELS) == pytest.approx(5 / 6)
    assert roc_auc(SCORES, np.array(LABELS, dtype=bool)) == pytest.approx(5 / 6)


def test_roc_auc_perfect_and_inverted() -> None:
    assert roc_auc([0.1, 0.2, 0.9], [0, 0, 1]) == 1.0
    assert roc_auc([0.9, 0.2, 0.1], [0, 0, 1]) == 0.0


def test_roc_auc_matches_sklearn_on_random_data_with_ties() -> None:
    rng = np.random.default_rng(3)
    labels = rng.random(500) < 0.3
    scores = np.round(rng.random(500) + 0.3 * labels, 1)  # rounding creates many ties
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_roc_auc_errors() -> None:
    with pytest.raises(ValueError, match="both classes; got 3 positive"):
        roc_auc([0.1, 0.2, 0.3], [1, 1, 1])
    with pytest.raises(ValueError, match="labels must be bool or 0/1, got value 2"):
        roc_auc([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([0.1, float("nan")], [0, 1])
    with pytest.raises(ValueError, match=r"shapes \(2,\) and \(3,\)"):
        roc_auc([0.1, 0.2], [0, 1, 1])


def test_sensitivity_specificity_threshold_is_inclusive() -> None:
    # threshold 0.4: called positive = indices 1..4 -> TP 3, FP 1 (idx 1), TN 1 (idx 0), FN 0.
    assert sensitivity_specificity(SCORES, LABELS, 0.4) == SensSpec(1.0, 0.5, tp=3, fp=1, tn=1, fn=0)
    # threshold 0.5: only idx 3 -> TP 1, FP 0, TN 2, FN 2.
    r = sensitivity_specificity(SCORES, LABELS, 0.5)
    assert (r.tp, r.fp, r.tn, r.fn) == (1, 0, 2, 2)
    assert r.sensitivity == pytest.approx(1 / 3) and r.specificity == 1.0


def test_sensitivity_specificity_nan_when_undefined() -> None:
    r = sensitivity_specificity([0.2, 0.7], [1, 1], 0.5)
    assert r.sensitivity == 0.5 and math.isnan(r.specificity)
    r = sensitivity_specificity([0.2, 0.7], [0, 0], 0.5)
    assert math.isnan(r.sensitivity) and r.specificity == 0.5


def test_roc_curve_hand_computed() -> None:
    # Distinct scores 0.8, 0.4, 0.1; 3 positives, 2 negatives.
    # >= 0.8: TP 1, FP 0; >= 0.4: TP 3, FP 1; >= 0.1: TP 3, FP 2.
    fpr, tpr, thr = roc_curve(SCORES, LABELS)
    np.testing.assert_allclose(fpr, [0.0, 0.0, 0.5, 1.0])
    np.testing.assert_allclose(tpr, [0.0, 1 / 3, 1.0, 1.0])
    np.testing.assert_array_equal(thr, [np.inf, 0.8, 0.4, 0.1])
    assert np.trapezoid(tpr, fpr) == pytest.approx(5 / 6)  # area agrees with roc_auc


def test_roc_curve_matches_sklearn() -> None:
    rng = np.random.default_rng(4)
    labels = rng.random(300) < 0.4
    scores = np.round(rng.random(300), 2)
    fpr, tpr, thr = roc_curve(scores, labels)
    sk_fpr, sk_tpr, sk_thr = sk_roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_allclose(thr[1:], sk_thr[1:])
    assert thr[0] == np.inf
