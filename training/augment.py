"""Augmentations on the model grid: a pipeline of transforms applied to one sample at a time, the image and
its maps alike.

A *sample* is a dict of (H, W) float32 arrays: ``image`` in [0, 1] (before normalisation) and any maps
that must move with it — ``mask`` (pneumothorax), ``lungs``, ``heatmap``. Spatial transforms resample
every array with the same coordinates (binary maps are re-thresholded at 0.5); intensity transforms touch
``image`` only. Randomness comes only from the ``rng`` argument, so a sample's augmentation is a function
of (seed, epoch, position) and an interrupted run resumes with the same draws.

Adding a transform (e.g. an image corruption): write a callable ``(sample, rng) -> sample`` and either
append it to a :class:`Pipeline` or add a factory to :data:`TRANSFORMS` and list it in the config's
``augment.extra`` (``[{"name": "gaussian_noise", "p": 0.5, "sigma": 0.08}]``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from training.config import AugmentConfig, ConfigError
from triage.corruptions import random_corruption

Sample = dict[str, NDArray[np.float32]]
BINARY_MAPS = ("mask", "lungs")
IMAGE = "image"


class Transform(Protocol):
    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample: ...


@dataclass
class Pipeline:
    """Transforms applied in order; ``append`` more (they see the output of the ones before)."""

    transforms: list[Transform]

    def append(self, transform: Transform) -> None:
        self.transforms.append(transform)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        for t in self.transforms:
            sample = t(sample, rng)
        return sample


def _homography(src: NDArray[np.float64], dst: NDArray[np.float64]) -> NDArray[np.float64]:
    """3×3 H with H·[src, 1] ∝ [dst, 1] for four point pairs (rows (x, y))."""
    rows = []
    for (x, y), (u, v) in zip(src, dst, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    coeffs = np.linalg.solve(np.array(rows), dst.reshape(-1))
    return np.append(coeffs, 1.0).reshape(3, 3)


@dataclass(frozen=True)
class Geometric:
    """Flip, rotation, zoom (about a random centre) and symmetric perspective warp, in one resampling.

    Output pixels map to input coordinates: normalised (x, y) in [-1, 1] → flip → zoom → rotate → warp.
    Outside the input is 0 (black, like the letterbox padding).
    """

    flip_p: float = 0.5
    rotate_p: float = 0.75
    rotate_deg: float = 10.0
    zoom_p: float = 0.75
    zoom: tuple[float, float] = (1.0, 1.1)
    warp_p: float = 0.75
    warp_magnitude: float = 0.2

    def coordinates(self, shape: tuple[int, int], rng: np.random.Generator) -> NDArray[np.float64] | None:
        """(2, H, W) input (row, column) coordinates for each output pixel, or None for the identity."""
        h, w = shape
        flip = rng.random() < self.flip_p
        angle = (
            math.radians(rng.uniform(-self.rotate_deg, self.rotate_deg))
            if rng.random() < self.rotate_p
            else 0.0
        )
        zoom, cx, cy = 1.0, 0.0, 0.0
        if rng.random() < self.zoom_p:
            zoom = float(rng.uniform(*self.zoom))
            room = 1.0 - 1.0 / zoom
            cx, cy = rng.uniform(-room, room), rng.uniform(-room, room)
        warp = rng.random() < self.warp_p
        mx, my = rng.uniform(-self.warp_magnitude, self.warp_magnitude, 2) if warp else (0.0, 0.0)
        if not flip and angle == 0.0 and zoom == 1.0 and not warp:
            return None
        ys, xs = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
        x, y = (-xs if flip else xs), ys
        x, y = x / zoom + cx, y / zoom + cy
        # rotate in pixel units so that non-square grids rotate rigidly
        px, py = x * (w / 2), y * (h / 2)
        c, s = math.cos(angle), math.sin(angle)
        x, y = (c * px - s * py) / (w / 2), (s * px + c * py) / (h / 2)
        if warp:
            corners = np.array([[-1, -1], [1, -1], [-1, 1], [1, 1]], np.float64)
            moved = np.array(
                [[-1 - mx, -1 - my], [1 + mx, -1 + my], [-1 + mx, 1 + my], [1 - mx, 1 - my]], np.float64
            )
            hmat = _homography(corners, moved)
            den = hmat[2, 0] * x + hmat[2, 1] * y + hmat[2, 2]
            x, y = (
                (hmat[0, 0] * x + hmat[0, 1] * y + hmat[0, 2]) / den,
                (hmat[1, 0] * x + hmat[1, 1] * y + hmat[1, 2]) / den,
            )
        return np.stack([(y + 1) * (h - 1) / 2, (x + 1) * (w - 1) / 2])

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        h, w = sample[IMAGE].shape
        coords = self.coordinates((h, w), rng)
        if coords is None:
            return sample
        out: Sample = {}
        for key, arr in sample.items():
            warped = ndimage.map_coordinates(arr, coords, order=1, mode="constant", cval=0.0)
            out[key] = (warped > 0.5).astype(np.float32) if key in BINARY_MAPS else warped.astype(np.float32)
        return out


def _logit(x: NDArray[np.float32]) -> NDArray[np.float32]:
    x = np.clip(x, 1e-4, 1 - 1e-4)
    out: NDArray[np.float32] = np.log(x / (1 - x)).astype(np.float32)
    return out


@dataclass(frozen=True)
class Lighting:
    """fastai's brightness and contrast: in logit space, add logit(b) and multiply by c; image only."""

    brightness_p: float = 0.75
    brightness: tuple[float, float] = (0.4, 0.6)
    contrast_p: float = 0.75
    contrast: tuple[float, float] = (0.8, 1.25)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        b = float(rng.uniform(*self.brightness)) if rng.random() < self.brightness_p else 0.5
        # contrast is drawn log-uniformly, so that 0.8 and 1.25 are equally likely
        lo, hi = self.contrast
        c = (
            float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
            if rng.random() < self.contrast_p
            else 1.0
        )
        if b == 0.5 and c == 1.0:
            return sample
        z = _logit(sample[IMAGE]) * np.float32(c) + np.float32(math.log(b / (1 - b)))
        return {**sample, IMAGE: (1.0 / (1.0 + np.exp(-z))).astype(np.float32)}


@dataclass(frozen=True)
class Cutout:
    """1..n rectangles of side ``size`` (fraction of the grid side) set to 0 in the image only."""

    holes: tuple[int, int] = (1, 4)
    size: tuple[float, float] = (0.05, 0.2)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        image = sample[IMAGE].copy()
        h, w = image.shape
        for _ in range(int(rng.integers(self.holes[0], self.holes[1] + 1))):
            ch = max(1, round(h * rng.uniform(*self.size)))
            cw = max(1, round(w * rng.uniform(*self.size)))
            y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            image[y : y + ch, x : x + cw] = 0.0
        return {**sample, IMAGE: image}


@dataclass(frozen=True)
class GaussianNoise:
    """Additive Gaussian noise (σ in [0, 1] image units) with probability p, clipped to [0, 1]; image only.
    The first of the robustness study's corruptions (seeds.md, E); an example of an ``extra`` transform."""

    p: float = 0.5
    sigma: float = 0.08

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if rng.random() >= self.p:
            return sample
        noisy = sample[IMAGE] + rng.normal(0.0, self.sigma, sample[IMAGE].shape).astype(np.float32)
        return {**sample, IMAGE: np.clip(noisy, 0.0, 1.0).astype(np.float32)}


@dataclass(frozen=True)
class CorruptionAugment:
    """With probability ``p``: one corruption of :mod:`triage.corruptions` (the 5 × 5 robustness set) at a
    random severity; image only (the masks do not move). ``--corruption-augment`` of the saliency U-Net."""

    p: float = 0.5

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        return {**sample, IMAGE: random_corruption(sample[IMAGE], rng, self.p)}


# Every transform ``augment.extra`` can name, filled here at import.
TRANSFORMS: dict[str, Callable[..., Transform]] = {
    "geometric": Geometric,
    "lighting": Lighting,
    "cutout": Cutout,
    "gaussian_noise": GaussianNoise,
    "corruption": CorruptionAugment,
}


def build_transform(spec: dict[str, Any]) -> Transform:
    """A registered transform from ``{"name": ..., **parameters}``; ConfigError naming the valid names."""
    params = dict(spec)
    name = params.pop("name", None)
    factory = TRANSFORMS.get(str(name))
    if factory is None:
        raise ConfigError(f"unknown augment.extra transform {name!r}; valid: {sorted(TRANSFORMS)}")
    try:
        return factory(**{k: tuple(v) if isinstance(v, list) else v for k, v in params.items()})
    except TypeError as exc:
        raise ConfigError(f"augment.extra {name}: {exc}") from exc


def build_pipeline(config: AugmentConfig, epoch: int) -> Pipeline:
    """The training pipeline for ``epoch`` (Cutout joins from ``cutout_from_epoch``); empty if disabled."""
    if not config.enabled:
        return Pipeline([])
    transforms: list[Transform] = [
        Geometric(
            config.flip_p,
            config.rotate_p,
            config.rotate_deg,
            config.zoom_p,
            config.zoom,
            config.warp_p,
            config.warp_magnitude,
        ),
        Lighting(config.brightness_p, config.brightness, config.contrast_p, config.contrast),
    ]
    if config.cutout_from_epoch is not None and epoch >= config.cutout_from_epoch:
        transforms.append(Cutout(config.cutout_holes, config.cutout_size))
    transforms.extend(build_transform(spec) for spec in config.extra)
    return Pipeline(transforms)
