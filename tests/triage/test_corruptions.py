"""The 5 × 5 corruptions: exact parameters, range, reproducibility, and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest

from triage.corruptions import (
    CORRUPTIONS,
    PARAMETERS,
    SEVERITIES,
    corrupt,
    motion_blur,
    motion_kernel,
    random_corruption,
)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_every_cell_stays_in_range_and_is_reproducible(name: str) -> None:
    image = np.random.default_rng(1).random((64, 64)).astype(np.float32)
    for severity in SEVERITIES:
        a = corrupt(image, name, severity, rng(5))
        b = corrupt(image, name, severity, rng(5))
        assert a.dtype == np.float32 and a.shape == image.shape
        assert a.min() >= 0.0 and a.max() <= 1.0
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, image)


def test_parameters_are_the_digests() -> None:
    assert PARAMETERS["gaussian"] == (0.08, 0.12, 0.18, 0.26, 0.38)
    assert PARAMETERS["speckle"] == (0.15, 0.20, 0.35, 0.45, 0.60)
    assert PARAMETERS["motion_blur"] == ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))
    assert PARAMETERS["contrast"] == (0.40, 0.30, 0.20, 0.10, 0.05)
    assert PARAMETERS["brightness"] == (0.10, 0.20, 0.30, 0.40, 0.50)


def test_noise_has_the_stated_spread() -> None:
    grey = np.full((256, 256), 0.5, np.float32)
    assert float(np.std(corrupt(grey, "gaussian", 1, rng()) - grey)) == pytest.approx(0.08, rel=0.03)
    # speckle: x·N(0, c) → spread 0.5·c at x = 0.5
    assert float(np.std(corrupt(grey, "speckle", 1, rng()) - grey)) == pytest.approx(0.075, rel=0.03)


def test_contrast_and_brightness_are_exact() -> None:
    image = np.array([[0.2, 0.8], [0.2, 0.8]], np.float32)
    np.testing.assert_allclose(corrupt(image, "contrast", 1, rng()), [[0.38, 0.62]] * 2, atol=1e-6)
    np.testing.assert_allclose(corrupt(image, "brightness", 2, rng()), [[0.4, 1.0]] * 2, atol=1e-6)


def test_motion_blur_streaks_along_its_direction() -> None:
    k = motion_kernel(10, 3)
    assert len(k) == 21 and k.sum() == pytest.approx(1.0) and k[0] == k.max()
    flat = np.full((32, 32), 0.3, np.float32)
    np.testing.assert_allclose(motion_blur(flat, 10, 3, 20.0), flat, atol=1e-6)  # constants stay
    dot = np.zeros((41, 41), np.float32)
    dot[20, 20] = 1.0
    horizontal = motion_blur(dot, 5, 2, 0.0)
    assert horizontal.sum() == pytest.approx(1.0)
    assert np.count_nonzero(horizontal[20]) == 11 and np.count_nonzero(horizontal) == 11  # one row
    # more severe → blurrier: less pixel variance left in a random image (same direction)
    noise = np.random.default_rng(2).random((224, 224)).astype(np.float32)
    spreads = [float(corrupt(noise, "motion_blur", s, rng(3)).std()) for s in SEVERITIES]
    assert spreads[0] > spreads[2] > spreads[4]


def test_augmentation_applies_with_probability_p() -> None:
    image = np.random.default_rng(9).random((16, 16)).astype(np.float32)
    g = rng(4)
    changed = sum(not np.array_equal(random_corruption(image, g, p=0.5), image) for _ in range(200))
    assert 70 < changed < 130
    assert np.array_equal(random_corruption(image, g, p=0.0), image)


def test_bad_names_and_severities_are_one_line_errors() -> None:
    image = np.zeros((8, 8), np.float32)
    with pytest.raises(ValueError, match="unknown corruption 'fog'; valid: gaussian, speckle, motion_blur"):
        corrupt(image, "fog", 1, rng())
    with pytest.raises(ValueError, match=r"severity must be one of \(1, 2, 3, 4, 5\), got 6"):
        corrupt(image, "gaussian", 6, rng())
    with pytest.raises(ValueError, match="2-D image"):
        corrupt(np.zeros((2, 8, 8)), "gaussian", 1, rng())
