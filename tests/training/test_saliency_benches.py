"""The corruption-arms and U-Net benchmarks' statistics: the bootstrap AUC is the AUC, resamples keep the
classes, the corrupted test sets are seeded and differ from the clean one, a perfect map scores perfectly
and the centre-bias map peaks at the centre; and one end-to-end run of each on the tiny synthetic set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.saliency.corruption_arms import (
    SETS,
    CorruptionSetup,
    bootstrap_aucs,
    corrupted_set,
    resamples,
)
from training.saliency.corruption_arms import run as run_corruptions
from training.saliency.unet_bench import centre_bias, score, summarise
from triage import metrics


def test_bootstrap_auc_row_zero_is_the_auc_and_resamples_keep_the_classes() -> None:
    rng = np.random.default_rng(0)
    y = (np.arange(60) % 3 == 0).astype(int)
    p = rng.random((2, 60)) + 0.3 * y
    idx = resamples(y, 50)
    assert idx.shape == (51, 60)
    assert all(int(y[row].sum()) == int(y.sum()) for row in idx)
    aucs = bootstrap_aucs(p, y, idx)
    assert aucs.shape == (2, 51)
    for k in range(2):
        assert aucs[k, 0] == pytest.approx(metrics.roc_auc(p[k], y))
        assert aucs[k, 7] == pytest.approx(metrics.roc_auc(p[k][idx[7]], y[idx[7]]))


def test_corrupted_sets_are_seeded_and_differ_from_clean() -> None:
    images = np.random.default_rng(1).random((3, 32, 32)).astype(np.float32)
    assert corrupted_set(images, "clean", 0, 0) is images
    a = corrupted_set(images, "gaussian", 3, 0)
    assert np.array_equal(a, corrupted_set(images, "gaussian", 3, 0))
    assert not np.array_equal(a, corrupted_set(images, "gaussian", 3, 1))
    assert not np.allclose(a, images)


def test_a_perfect_map_scores_perfectly_and_the_centre_bias_peaks_at_the_centre() -> None:
    yy, xx = np.mgrid[0:16, 0:16]
    target = np.exp(-((yy - 4.0) ** 2 + (xx - 10.0) ** 2) / 8.0)[None]
    lesion = ((yy - 4) ** 2 + (xx - 10) ** 2 <= 4)[None]
    test = {"target": target, "lesion": lesion, "lungs": np.ones_like(lesion), "label": np.array([1])}
    good = score(target, test)
    assert good["cc"][0] == pytest.approx(1.0)
    assert good["sim"][0] == pytest.approx(1.0)
    assert good["kl"][0] == pytest.approx(0.0, abs=1e-4)
    assert good["pointing"][0] == 1.0
    bad = score(centre_bias((16, 16))[None], test)
    assert bad["cc"][0] < 0.5 and bad["kl"][0] > 0.1 and bad["pointing"][0] == 0.0
    c = centre_bias((17, 17))
    assert np.unravel_index(c.argmax(), c.shape) == (8, 8)


def test_summarise_pairs_the_difference_per_image() -> None:
    a = {
        k: np.array([1.0, 2.0, 3.0, np.nan])
        for k in ("kl", "cc", "sim", "pointing", "ehr_auc", "mass_lesion", "mass_lungs")
    }
    b = {k: v - 1.0 for k, v in a.items()}
    out = summarise({"unet": [a], "centre": [b]}, b=200)
    mean, lo, hi = out["vs_unet"]["centre"]["cc"]
    assert (mean, lo, hi) == (pytest.approx(1.0), pytest.approx(1.0), pytest.approx(1.0))
    assert out["means"]["unet"]["cc"][0] == pytest.approx(2.0)


def test_the_corruption_arms_run_end_to_end(
    synth_data: Path, synth_test: Path, cache_dir: Path, tmp_path: Path
) -> None:
    setup = CorruptionSetup(
        synth_data, synth_test, tmp_path, seeds=1, epochs=1, bootstrap=20, cache=cache_dir
    )
    table = run_corruptions(setup, log=lambda _: None)
    assert len(table) == 2 * len(SETS)
    clean = [r for r in table if r["corruption"] == "clean"]
    assert all(r["delta_auc"] == 0.0 for r in clean)
    assert all(r["delta_lo"] <= r["delta_auc"] <= r["delta_hi"] for r in table)
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["test_images"] == 10
    assert (tmp_path / "models" / "plain-0.pt").is_file()
    rows = (tmp_path / "models.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * len(SETS)
