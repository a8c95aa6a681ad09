"""Augmentations move the image and its masks together; configs are data (presets, YAML, --set)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.augment import TRANSFORMS, Cutout, Geometric, Lighting, Pipeline, build_pipeline
from training.config import AugmentConfig, ConfigError, preset, read_config, resolve, write_config


def _sample() -> dict[str, np.ndarray]:
    yy, xx = np.mgrid[:64, :64]
    blob = (((yy - 20) ** 2 + (xx - 40) ** 2) < 64).astype(np.float32)
    return {"image": 0.2 + 0.6 * blob, "mask": blob.copy(), "lungs": blob.copy(), "heatmap": 0.5 * blob}


def test_spatial_transforms_move_image_and_masks_together() -> None:
    geo = Geometric(flip_p=1.0, rotate_p=1.0, zoom_p=1.0, warp_p=1.0)
    for seed in range(5):
        out = geo(_sample(), np.random.default_rng(seed))
        assert out["mask"].any() and set(np.unique(out["mask"])) <= {0.0, 1.0}
        moved = out["image"] > 0.5
        assert (moved == (out["mask"] > 0)).mean() > 0.98  # the lesion and its mask stay together
        np.testing.assert_array_equal(out["mask"], out["lungs"])
        assert not np.array_equal(out["mask"], _sample()["mask"])  # something actually moved
    flipped = Geometric(flip_p=1.0, rotate_p=0, zoom_p=0, warp_p=0)(_sample(), np.random.default_rng(0))
    np.testing.assert_allclose(flipped["mask"], _sample()["mask"][:, ::-1], atol=1e-6)


def test_intensity_transforms_touch_the_image_only_and_are_reproducible() -> None:
    pipe = Pipeline([Lighting(1.0, (0.3, 0.7), 1.0, (0.5, 2.0)), Cutout((2, 2), (0.2, 0.3))])
    a = pipe(_sample(), np.random.default_rng(1))
    b = pipe(_sample(), np.random.default_rng(1))
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["mask"], _sample()["mask"])
    assert not np.allclose(a["image"], _sample()["image"])


def test_cutout_joins_late_and_extra_transforms_append() -> None:
    config = AugmentConfig(cutout_from_epoch=3, extra=({"name": "gaussian_noise", "p": 1.0, "sigma": 0.1},))
    early, late = build_pipeline(config, 2), build_pipeline(config, 3)
    assert [type(t).__name__ for t in early.transforms] == ["Geometric", "Lighting", "GaussianNoise"]
    assert [type(t).__name__ for t in late.transforms] == ["Geometric", "Lighting", "Cutout", "GaussianNoise"]
    with pytest.raises(ConfigError, match=r"unknown augment\.extra transform 'blur'"):
        build_pipeline(AugmentConfig(extra=({"name": "blur"},)), 0)
    assert set(TRANSFORMS) >= {"geometric", "lighting", "cutout", "gaussian_noise"}


def test_presets_follow_the_thesis_where_it_is_specified() -> None:
    cls, seg = preset("seed", "classifier"), preset("seed", "segmenter")
    assert (cls.arch.backbone, cls.input_size, cls.loss, cls.optimizer) == (
        "resnext50_32x4d",
        (224, 224),
        "soft_f1",
        "radam",
    )
    assert cls.augment.cutout_from_epoch == 70 and cls.epochs == 127
    assert (seg.arch.backbone, seg.arch.decoder, seg.input_size, seg.loss) == (
        "resnet34",
        "Unet",
        (256, 256),
        "jaccard",
    )
    assert preset("seed", "baseline").arch == seg.arch
    small = preset("small", "classifier")
    assert small.arch.backbone == "resnet18" and 128 <= small.input_size[0] <= 192


def test_config_round_trips_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("lr: 5.0e-4\naugment:\n  rotate_deg: 3\n")
    config = resolve(
        "segmenter", "small", tmp_path / "c.yaml", ["epochs=3", "augment.zoom=[1.0, 1.2]"], batch_size=4
    )
    assert (config.lr, config.augment.rotate_deg, config.epochs, config.augment.zoom, config.batch_size) == (
        5e-4,
        3.0,
        3,
        (1.0, 1.2),
        4,
    )
    write_config(tmp_path / "resolved.yaml", config)
    assert read_config(tmp_path / "resolved.yaml") == config
    with pytest.raises(ConfigError, match="epochs must be an integer"):
        resolve("segmenter", "small", overrides=["epochs=two"])
    with pytest.raises(ConfigError, match="preset must be one of"):
        resolve("segmenter", "huge")
