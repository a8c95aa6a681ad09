"""Paired comparisons of the experiment's arms, the inner validation split and the cpu preset."""

from __future__ import annotations

import numpy as np
import torch

from training.config import preset
from training.models import build_model
from training.paired import paired_difference, verdict


def _arm(values: np.ndarray) -> dict[str, float]:
    return {f"img-{i}": float(v) for i, v in enumerate(values)}


def test_a_consistent_gain_is_shown_and_noise_is_not() -> None:
    rng = np.random.default_rng(0)
    base = rng.random(300)
    better = [_arm(np.clip(base + 0.05 + rng.normal(0, 0.02, 300), 0, 1)) for _ in range(3)]
    noise = [_arm(np.clip(base + rng.normal(0, 0.2, 300), 0, 1)) for _ in range(3)]
    same = [_arm(base)] * 3
    gain = paired_difference(better, same, resamples=500)
    assert gain["ci"][0] > 0 and verdict(gain).startswith("better") and len(gain["per_seed"]) == 3
    assert 0.03 < gain["mean"] < 0.07 and gain["images"] == 300 and gain["seeds"] == 3
    none = paired_difference(noise, same, resamples=500)
    assert none["ci"][0] < 0 < none["ci"][1] and verdict(none).startswith("no difference")
    assert verdict(paired_difference(same, better, resamples=200)).startswith("worse")


def test_the_cpu_preset_sees_256_px_with_a_lean_gate() -> None:
    cls = preset("cpu", "classifier")
    assert min(cls.input_size) >= 256 and cls.loss == "bce"
    model = build_model(cls.arch)
    assert sum(p.numel() for p in model.parameters()) < 2_000_000  # a quarter of ResNet-10-T's widths
    with torch.no_grad():
        assert model(torch.zeros(1, 1, *cls.input_size)).shape == (1, 1)
    seg = preset("cpu", "segmenter")
    with torch.no_grad():
        assert build_model(seg.arch)(torch.zeros(1, 1, *seg.input_size)).shape == (1, 1, *seg.input_size)


def test_the_epoch_is_chosen_on_an_inner_slice_of_the_training_folds() -> None:
    from types import SimpleNamespace

    from training.prepare import inner_validation

    patients = [f"p{i // 2}" for i in range(200)]  # two studies per patient
    labels = np.array([(i // 2) % 3 == 0 for i in range(200)])
    g = SimpleNamespace(patients=patients, labels=labels)
    rows = list(range(200))
    val = inner_validation(g, rows, fold=1)  # type: ignore[arg-type]
    assert val == inner_validation(g, rows, fold=1) != inner_validation(g, rows, fold=2)  # type: ignore[arg-type]
    assert {patients[i] for i in val}.isdisjoint({patients[i] for i in rows if i not in val})
    for positive in (True, False):
        share = (labels[val] == positive).sum() / (labels == positive).sum()
        assert 0.1 <= share <= 0.25
