"""Image corruptions for robustness tests: 5 kinds × 5 severities (seeds.md, E), numpy only.

Every corruption takes a float image (H, W) in [0, 1] (display orientation, before the model's
normalisation) and returns a new float32 image clipped to [0, 1]:

============  ==========================================  =====================================
name          operation                                   parameter by severity 1 … 5
============  ==========================================  =====================================
gaussian      x + N(0, σ²)                                σ = .08, .12, .18, .26, .38
speckle       x + x·N(0, c²)                              c = .15, .20, .35, .45, .60
motion_blur   one-sided Gaussian streak (radius, σ) px    (10, 3), (15, 5), (15, 8), (15, 12), (20, 15)
contrast      (x − mean)·c + mean                         c = .40, .30, .20, .10, .05
brightness    x + c                                       c = .10, .20, .30, .40, .50
============  ==========================================  =====================================

Motion blur follows the ``imagecorruptions`` implementation of ImageMagick's ``-motion-blur`` (the
source of these parameters): a kernel of ``2·radius + 1`` taps with weights exp(−i²/2σ²), i = 0, 1, …,
normalised to sum 1, laid along a direction drawn uniformly in [−45°, 45°] from horizontal; pixels
beyond the border repeat the edge. Radius and σ are in pixels of a ``reference_side`` = 224 px image (the
size those parameters were made for) and are scaled with the image's longer side, so a severity means
the same blur at every model input size. The random parts (noise, blur direction) come from the
``numpy.random.Generator`` passed in, so an evaluation set is reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

FloatImage = NDArray[np.float32]

SEVERITIES = (1, 2, 3, 4, 5)
PARAMETERS: dict[str, tuple[object, ...]] = {
    "gaussian": (0.08, 0.12, 0.18, 0.26, 0.38),
    "speckle": (0.15, 0.20, 0.35, 0.45, 0.60),
    "motion_blur": ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
    "contrast": (0.40, 0.30, 0.20, 0.10, 0.05),
    "brightness": (0.10, 0.20, 0.30, 0.40, 0.50),
}
CORRUPTIONS: tuple[str, ...] = tuple(PARAMETERS)
REFERENCE_SIDE = 224


def _gaussian(x: FloatImage, sigma: float, rng: np.random.Generator, _side: int) -> FloatImage:
    return x + rng.normal(0.0, sigma, x.shape).astype(np.float32)


def _speckle(x: FloatImage, c: float, rng: np.random.Generator, _side: int) -> FloatImage:
    return x + x * rng.normal(0.0, c, x.shape).astype(np.float32)


def _contrast(x: FloatImage, c: float, _rng: np.random.Generator, _side: int) -> FloatImage:
    mean = np.float32(x.mean())
    return (x - mean) * np.float32(c) + mean


def _brightness(x: FloatImage, c: float, _rng: np.random.Generator, _side: int) -> FloatImage:
    return x + np.float32(c)


def motion_kernel(radius: float, sigma: float) -> NDArray[np.float64]:
    """The streak's weights, ``2·round(radius) + 1`` taps, exp(−i²/2σ²) normalised to sum 1."""
    width = 2 * max(0, round(radius)) + 1
    i = np.arange(width, dtype=np.float64)
    k = np.exp(-(i**2) / (2.0 * max(sigma, 1e-6) ** 2))
    out: NDArray[np.float64] = k / k.sum()
    return out


def motion_blur(x: FloatImage, radius: float, sigma: float, angle_deg: float) -> FloatImage:
    """Blur ``x`` along ``angle_deg`` with :func:`motion_kernel` (edge pixels repeat beyond the border)."""
    kernel = motion_kernel(radius, sigma)
    width = len(kernel)
    dy_unit, dx_unit = math.sin(math.radians(angle_deg)), math.cos(math.radians(angle_deg))
    pad = width
    padded = np.pad(x, pad, mode="edge")
    h, w = x.shape
    out = np.zeros_like(x, dtype=np.float32)
    for i, weight in enumerate(kernel):
        dy = -math.ceil(i * dy_unit - 0.5)
        dx = -math.ceil(i * dx_unit - 0.5)
        if abs(dy) >= h or abs(dx) >= w:
            break
        # shifted[y, x] = x[y − dy, x − dx]
        out += np.float32(weight) * padded[pad - dy : pad - dy + h, pad - dx : pad - dx + w]
    return out


def _motion(x: FloatImage, params: tuple[float, float], rng: np.random.Generator, side: int) -> FloatImage:
    radius, sigma = params
    scale = side / REFERENCE_SIDE
    return motion_blur(x, radius * scale, sigma * scale, float(rng.uniform(-45.0, 45.0)))


_FUNCTIONS: dict[str, Callable[[FloatImage, object, np.random.Generator, int], FloatImage]] = {
    "gaussian": _gaussian,  # type: ignore[dict-item]
    "speckle": _speckle,  # type: ignore[dict-item]
    "motion_blur": _motion,  # type: ignore[dict-item]
    "contrast": _contrast,  # type: ignore[dict-item]
    "brightness": _brightness,  # type: ignore[dict-item]
}


def check(name: str, severity: int) -> None:
    """ValueError naming the valid corruptions / severities."""
    if name not in PARAMETERS:
        raise ValueError(f"unknown corruption {name!r}; valid: {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"corruption severity must be one of {SEVERITIES}, got {severity!r}")


def corrupt(image: NDArray[np.floating], name: str, severity: int, rng: np.random.Generator) -> FloatImage:
    """``image`` (H, W) in [0, 1] with corruption ``name`` at ``severity`` (1..5), clipped to [0, 1]."""
    check(name, severity)
    x = np.asarray(image, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"corruptions take a 2-D image, got shape {x.shape}")
    out = _FUNCTIONS[name](x, PARAMETERS[name][severity - 1], rng, max(x.shape))
    result: FloatImage = np.clip(out, 0.0, 1.0).astype(np.float32)
    return result


def random_corruption(image: NDArray[np.floating], rng: np.random.Generator, p: float = 0.5) -> FloatImage:
    """Training augmentation (``--corruption-augment``): with probability ``p`` one corruption drawn
    uniformly, at a severity drawn uniformly from 1..5; otherwise the image unchanged (as float32)."""
    x = np.asarray(image, dtype=np.float32)
    if rng.random() >= p:
        return x
    name = CORRUPTIONS[int(rng.integers(len(CORRUPTIONS)))]
    return corrupt(x, name, int(rng.integers(1, 6)), rng)
