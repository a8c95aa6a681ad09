"""Small 2-D geometry helpers for the phantom: curves, polygons and a global pose.

All coordinates are normalised image coordinates: x to the right, y downwards, (0, 0) the top-left
corner and (1, 1) the bottom-right one. Arrays of points have shape (N, 2) as (x, y).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

Points = NDArray[np.float64]


def bezier(
    p0: Points | tuple[float, float],
    p1: Points | tuple[float, float],
    p2: Points | tuple[float, float],
    n: int = 24,
) -> Points:
    """Quadratic Bézier curve from p0 to p2 with control point p1, sampled at n points, shape (n, 2)."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    a, b, c = (np.asarray(p, dtype=np.float64) for p in (p0, p1, p2))
    return np.asarray((1 - t) ** 2 * a + 2 * (1 - t) * t * b + t**2 * c, dtype=np.float64)


def cubic(
    p0: tuple[float, float],
    p1: tuple[float, float],
    p2: tuple[float, float],
    p3: tuple[float, float],
    n: int = 32,
) -> Points:
    """Cubic Bézier curve sampled at n points, shape (n, 2)."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    a, b, c, d = (np.asarray(p, dtype=np.float64) for p in (p0, p1, p2, p3))
    out = (1 - t) ** 3 * a + 3 * (1 - t) ** 2 * t * b + 3 * (1 - t) * t**2 * c + t**3 * d
    return np.asarray(out, dtype=np.float64)


def ellipse(cx: float, cy: float, rx: float, ry: float, angle: float = 0.0, n: int = 48) -> Points:
    """Closed ellipse outline (last point not repeated), rotated by `angle` radians."""
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    ca, sa = np.cos(angle), np.sin(angle)
    return np.stack([cx + ca * x - sa * y, cy + sa * x + ca * y], axis=1)


def arc_length(points: Points) -> NDArray[np.float64]:
    """Cumulative arc length along a polyline, shape (N,), starting at 0."""
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    return np.concatenate([[0.0], np.cumsum(seg)])


def resample(points: Points, n: int) -> Points:
    """The polyline resampled at n points equally spaced along its length."""
    s = arc_length(points)
    targets = np.linspace(0.0, s[-1], n)
    return np.stack([np.interp(targets, s, points[:, 0]), np.interp(targets, s, points[:, 1])], axis=1)


def polygon_area(points: Points) -> float:
    """Unsigned area of a closed polygon (shoelace formula)."""
    x, y = points[:, 0], points[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


@dataclass(frozen=True)
class Pose:
    """A similarity transform about the image centre: rotation, isotropic scale and a shift.

    Applied to every anatomical point, so that masks and image stay consistent by construction.
    """

    angle_rad: float = 0.0
    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)

    def apply(self, points: Points) -> Points:
        c, s = np.cos(self.angle_rad), np.sin(self.angle_rad)
        rel = (np.asarray(points, dtype=np.float64) - 0.5) * self.scale
        rot = np.stack([c * rel[:, 0] - s * rel[:, 1], s * rel[:, 0] + c * rel[:, 1]], axis=1)
        return np.asarray(rot + 0.5 + np.asarray(self.shift), dtype=np.float64)

    def apply_xy(self, x: float, y: float) -> tuple[float, float]:
        p = self.apply(np.array([[x, y]], dtype=np.float64))[0]
        return float(p[0]), float(p[1])
