"""The threshold search finds the known best thresholds on hand-made out-of-fold predictions, and its
numbers equal the runtime's own post-processing scored with triage.metrics."""

from __future__ import annotations

import itertools

import numpy as np

from triage.bundle import Thresholds
from triage.cascade.postprocess import triplet_mask
from triage.evaluation.search import SearchGrid, search
from triage.metrics import dice_per_image


def _disc(shape: tuple[int, int], centre: tuple[int, int], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def _hand_made() -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Six positives (a disc, the map 0.9 on it and 0.45 in a ring around it, a 0.7 speck elsewhere) and six
    negatives (noise below 0.3). Gate probabilities: positives 0.8-0.95, negatives 0.1-0.35 except one
    confident false positive at 0.9, whose map has a 30-px blob at 0.6; another negative (gate 0.15) has a
    30-px blob at 0.95 that only the gate can remove.

    Known best: gate 0.5 passes exactly the positives and the 0.9 negative; top 0.85 with min_area 20
    empties that negative's mask (its blob never reaches 0.85); bottom 0.5 keeps the disc and drops the 0.45
    ring; min_component 4 removes the 2-px 0.7 speck. That gives Dice 1 on every image."""
    shape = (32, 32)
    maps, truths, gates = [], [], []
    for i in range(6):
        disc = _disc(shape, (10 + i, 12 + i), 4 + i % 2)
        ring = _disc(shape, (10 + i, 12 + i), 6 + i % 2) & ~disc
        m = np.full(shape, 0.05, np.float32)
        m[ring], m[disc] = 0.45, 0.9
        m[28, 2:4] = 0.7  # a 2-px speck
        maps.append(m)
        truths.append(disc)
        gates.append(0.8 + 0.03 * i)
    for i in range(6):
        m = np.random.default_rng(i).uniform(0.0, 0.3, shape).astype(np.float32)
        if i < 2:
            m[20:25, 20:26] = 0.6 if i == 0 else 0.95  # 30 px
        maps.append(m)
        truths.append(np.zeros(shape, bool))
        gates.append(0.9 if i == 0 else 0.1 + 0.05 * i)
    return np.array(gates), maps, truths


def test_search_finds_the_known_best_thresholds() -> None:
    gates, maps, truths = _hand_made()
    grid = SearchGrid(
        gate=(0.1, 0.5, 0.95), top=(0.5, 0.85), min_area=(0, 20), bottom=(0.3, 0.5), min_component=(0, 4)
    )
    result = search(gates, maps, truths, grid)
    assert result.value == 1.0
    assert result.thresholds == {"gate": 0.5, "top": 0.85, "min_area": 20, "bottom": 0.5, "min_component": 4}
    # each wrong choice costs: a low gate lets negatives through, bottom 0.3 keeps the ring, no min_component
    # keeps the speck, min_area 0 keeps the confident negative's blob
    assert result.surface[0, 1, 1, 1, 1] < 1.0
    assert result.surface[1, 1, 1, 0, 1] < 1.0
    assert result.surface[1, 1, 1, 1, 0] < 1.0
    assert result.surface[1, 1, 0, 1, 1] < 1.0


def test_search_surface_equals_the_runtime_post_processing() -> None:
    gates, maps, truths = _hand_made()
    grid = SearchGrid(
        gate=(0.3, 0.85), top=(0.6, 0.85), min_area=(0, 5, 40), bottom=(0.4, 0.55), min_component=(0, 3, 30)
    )
    result = search(gates, maps, truths, grid)
    for index in itertools.product(*(range(n) for n in grid.shape)):
        g, t, a, b, c = (
            grid.gate[index[0]],
            grid.top[index[1]],
            grid.min_area[index[2]],
            grid.bottom[index[3]],
            grid.min_component[index[4]],
        )
        th = Thresholds(g, t, a, b, c)
        pred = np.stack(
            [
                triplet_mask(m, th) if q >= g else np.zeros(m.shape, bool)
                for m, q in zip(maps, gates, strict=True)
            ]
        )
        expected = dice_per_image(pred, np.stack(truths)).mean()
        assert abs(result.surface[index] - expected) < 1e-6


def test_no_gate_segments_every_image() -> None:
    _, maps, truths = _hand_made()
    result = search(None, maps, truths, SearchGrid.single())
    assert result.thresholds["gate"] == 0.0
    assert result.thresholds["min_area"] == 0 and result.thresholds["top"] == result.thresholds["bottom"]
    # without a gate the 0.95 blob of a negative stays whatever the threshold: one image scores 0
    assert abs(result.value - 11 / 12) < 1e-6
    assert result.thresholds["bottom"] == 0.7  # the first above the 0.6 blob; p > 0.7 also drops the speck
