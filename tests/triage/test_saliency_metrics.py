"""Saliency metrics on hand-made maps whose values are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from triage.saliency_metrics import (
    compare_groups,
    ehr_auc,
    ehr_curve,
    fit_map,
    inside_outside_diff,
    kl_divergence,
    map_scores,
    mass_inside,
    pearson_cc,
    pointing_game,
    similarity,
)


def region() -> np.ndarray:
    m = np.zeros((4, 4), bool)
    m[:2, :2] = True  # the top-left quarter
    return m


def test_mass_inside_and_diff() -> None:
    h = np.zeros((4, 4))
    h[0, 0], h[3, 3] = 3.0, 1.0
    assert mass_inside(h, region()) == pytest.approx(0.75)
    # a uniform map scores the region's area fraction
    assert mass_inside(np.ones((4, 4)), region()) == pytest.approx(0.25)
    # Diff on a [0, 1] map: inside mean (1 + 0 + 0 + 0)/4, outside mean (1/3)/12
    assert inside_outside_diff(h / 3, region()) == pytest.approx(0.25 - (1 / 3) / 12)
    assert math.isnan(mass_inside(np.zeros((4, 4)), region()))
    assert math.isnan(inside_outside_diff(h, np.zeros((4, 4), bool)))


def test_ehr_curve_and_auc() -> None:
    h = np.zeros((4, 4))
    h[0, 0], h[0, 1], h[3, 3] = 1.0, 0.5, 0.5
    t, ehr = ehr_curve(h, region(), thresholds=4)
    np.testing.assert_allclose(t, [0.25, 0.5, 0.75, 1.0])
    # t ≤ 0.5: three pixels, two inside; t > 0.5: only the peak, inside
    np.testing.assert_allclose(ehr, [2 / 3, 2 / 3, 1.0, 1.0])
    assert ehr_auc(h, region(), thresholds=4) == pytest.approx((2 / 3 + 2 / 3 + 1 + 1) / 4)
    # scale does not matter (the map is divided by its maximum)
    assert ehr_auc(7 * h, region(), thresholds=4) == pytest.approx(ehr_auc(h, region(), thresholds=4))
    # a map entirely outside scores 0; a perfect map 1
    assert ehr_auc(np.where(region(), 0.0, 1.0), region()) == 0.0
    assert ehr_auc(region().astype(float), region()) == pytest.approx(1.0)


def test_pointing_game_with_tolerance() -> None:
    h = np.zeros((4, 4))
    h[2, 2] = 1.0
    assert pointing_game(h, region()) == 0.0
    assert pointing_game(h, region(), tolerance_px=1) == 1.0  # the diagonal neighbour of (1, 1)
    h[0, 1] = 1.0  # a tie: the first maximum in row-major order wins
    assert pointing_game(h, region()) == 1.0
    assert math.isnan(pointing_game(np.zeros((4, 4)), region()))


def test_target_agreement() -> None:
    t = np.array([[1.0, 1.0], [0.0, 2.0]])
    assert kl_divergence(t, t) == pytest.approx(0.0, abs=1e-6)
    assert similarity(3 * t, t) == pytest.approx(1.0)
    assert pearson_cc(3 * t + 1, t) == pytest.approx(1.0)
    # P = (1/4, 1/4, 0, 1/2), Q uniform: KL = 2·(1/4)·log(1) + (1/2)·log(2)
    assert kl_divergence(np.ones((2, 2)), t) == pytest.approx(0.5 * math.log(2), rel=1e-5)
    # SIM = min(1/4,1/4) + min(1/4,1/4) + min(1/4,0) + min(1/4,1/2)
    assert similarity(np.ones((2, 2)), t) == pytest.approx(0.75)
    disjoint = np.array([[0.0, 0.0], [1.0, 0.0]])
    assert similarity(disjoint, t) == 0.0
    assert pearson_cc(disjoint, t) == pytest.approx(np.corrcoef(disjoint.ravel(), t.ravel())[0, 1])
    assert math.isnan(pearson_cc(np.ones((2, 2)), t))


def test_fit_map_and_map_scores_at_a_different_resolution() -> None:
    coarse = np.array([[1.0, 0.0], [0.0, 0.0]])
    big = fit_map(coarse, (8, 8))
    assert big.shape == (8, 8) and big[0, 0] == pytest.approx(1.0) and big[7, 7] == pytest.approx(0.0)
    m = np.zeros((8, 8), bool)
    m[:4, :4] = True
    scores = map_scores(coarse, region=m, target=m.astype(float))
    assert set(scores) == {"mass_inside", "diff", "ehr_auc", "pointing_game", "kl", "cc", "sim"}
    assert scores["pointing_game"] == 1.0 and scores["mass_inside"] > 0.7 and scores["cc"] > 0.8


def test_bad_inputs_name_the_problem() -> None:
    with pytest.raises(ValueError, match="negative values"):
        mass_inside(-np.ones((4, 4)), region())
    with pytest.raises(ValueError, match="region must be a bool mask"):
        mass_inside(np.ones((4, 4)), region().astype(int))
    with pytest.raises(ValueError, match=r"region shape \(4, 4\) differs from the map's \(2, 2\)"):
        mass_inside(np.ones((2, 2)), region())
    with pytest.raises(ValueError, match="NaN"):
        similarity(np.full((2, 2), np.nan), np.ones((2, 2)))


def test_group_comparison() -> None:
    heatmap = [0.81, 0.78, 0.85, 0.79, 0.90]
    ce = [0.25, 0.30, 0.22, 0.28, 0.27]
    c = compare_groups(heatmap, ce)
    assert c.u == 25.0 and c.cles == 1.0 and c.rank_biserial == 1.0
    assert c.p_value == pytest.approx(2 / 252)  # exact two-sided p for complete separation, 5 vs 5
    assert c.median_a == pytest.approx(0.81) and c.n_b == 5
    same = compare_groups([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert same.cles == pytest.approx(0.5) and same.p_value == pytest.approx(1.0)
    assert same.cohen_d == pytest.approx(0.0)
    # d = (2 − 1) / pooled SD 1 for two groups of SD 1
    assert compare_groups([1.0, 2.0, 3.0], [0.0, 1.0, 2.0]).cohen_d == pytest.approx(1.0)
    assert np.isnan(compare_groups([1.0], [2.0, 3.0]).cohen_d)
    with pytest.raises(ValueError, match="at least one value"):
        compare_groups([], [1.0])
