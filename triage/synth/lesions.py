"""Lung markings (vessel trees) and the pneumothorax geometry.

A pneumothorax is air between the chest wall and the lung: a lucent band along the apex or the
lateral lung edge, with no lung markings, bounded on its inner side by the thin visceral pleural
line of the collapsed lung. Here it is built from the lung outline: an arc of the outline is the
chest-wall side, and the same arc moved towards the hilum is the pleural line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from triage.synth.anatomy import Anatomy, Side
from triage.synth.geometry import Points, polygon_area

Stratum = Literal["small", "medium", "large"]
STRATA: tuple[Stratum, Stratum, Stratum] = ("small", "medium", "large")
# Pneumothorax area as a fraction of the image: the competition's hard stratum is < 0.5 %.
STRATUM_RANGES: dict[Stratum, tuple[float, float]] = {
    "small": (0.0010, 0.005),
    "medium": (0.005, 0.02),
    "large": (0.02, 0.065),
}


def stratum_of(area_fraction: float) -> Stratum:
    """The size stratum of a pneumothorax covering `area_fraction` of the image."""
    if area_fraction < STRATUM_RANGES["small"][1]:
        return "small"
    if area_fraction < STRATUM_RANGES["medium"][1]:
        return "medium"
    return "large"


@dataclass(frozen=True)
class Vessel:
    """One vessel branch: a short polyline (normalised), its width (normalised) and relative density."""

    path: Points
    width: float
    density: float


def vessel_tree(anatomy: Anatomy, side: Side, rng: np.random.Generator, density: float) -> list[Vessel]:
    """Branching vessels from the hilum that fade and thin towards the lung periphery.

    Grown one generation at a time (vectorised): each branch is a slightly tortuous 3-step polyline
    that splits in two with probability 0.85, the children 0.65-0.82 as long and 0.7 as wide.
    """
    if density <= 0:
        return []
    hx, hy = anatomy.hila[side]
    n = max(1, round(rng.uniform(4, 7) * min(density, 1.5)))
    # Primary directions fan out from the hilum: up to the apex, laterally, down to the base.
    angles = np.linspace(-2.0, 1.6, n) + rng.normal(0, 0.12, n)
    theta = angles if side == "left" else np.pi - angles
    start = np.tile([hx, hy], (n, 1))
    length = rng.uniform(0.05, 0.075, n)
    w0, width = 0.010, 0.010
    vessels: list[Vessel] = []
    for depth in range(6):
        m = len(theta)
        turns = theta[:, None] + np.cumsum(rng.normal(0, 0.12, (m, 3)), axis=1)
        steps = np.stack([np.cos(turns), np.sin(turns)], axis=2) * (length / 3)[:, None, None]
        paths = np.concatenate([start[:, None, :], start[:, None, :] + np.cumsum(steps, axis=1)], axis=1)
        dens = density * (0.4 + 0.6 * width / w0)
        vessels += [Vessel(path, width, dens) for path in paths]
        if depth == 5:
            break
        keep = rng.random(m) < 0.85
        k = int(keep.sum())
        spread = rng.uniform(0.25, 0.6, k)[:, None] * rng.uniform(0.6, 1.0, (k, 2)) * np.array([-1.0, 1.0])
        theta = (turns[keep, -1][:, None] + spread).ravel()
        start = np.repeat(paths[keep, -1], 2, axis=0)
        length = np.repeat(length[keep], 2) * rng.uniform(0.65, 0.82, 2 * k)
        width *= 0.7
    return vessels


@dataclass(frozen=True)
class Pneumothorax:
    side: Side
    location: Literal["apical", "lateral"]
    region: Points  # closed polygon: the chest-wall arc, then the pleural line reversed
    pleural_line: Points  # polyline from one end of the arc to the other
    depth: float  # maximal displacement of the lung edge, as a fraction of its distance to the hilum
    area_fraction: float  # polygon area / image area

    @property
    def centroid(self) -> tuple[float, float]:
        c = self.region.mean(axis=0)
        return float(c[0]), float(c[1])


def _arc_indices(
    n: int, lateral_end: int, location: str, rng: np.random.Generator, half: float
) -> np.ndarray:
    """Indices of the lung outline covered by the pneumothorax arc (wrapping around the apex)."""
    if location == "apical":
        centre = rng.uniform(0.0, 0.15) * lateral_end
    else:
        centre = rng.uniform(0.35, 0.65) * lateral_end
    half_n = max(4, int(half * n))
    return (np.arange(int(centre) - half_n, int(centre) + half_n + 1)) % n


def _build(
    anatomy: Anatomy, side: Side, idx: np.ndarray, depth: float, location: Literal["apical", "lateral"]
) -> Pneumothorax:
    lung = anatomy.lungs[side]
    outer = lung[idx]
    u = np.linspace(0.0, 1.0, len(idx))
    profile = np.sin(np.pi * u) ** 0.45  # a plateau that meets the wall at both ends
    hilum = np.asarray(anatomy.hila[side])
    inner = outer + (depth * profile)[:, None] * (hilum - outer)
    region = np.vstack([outer, inner[::-1]])
    return Pneumothorax(side, location, region, inner, depth, polygon_area(region))


def sample_pneumothorax(
    anatomy: Anatomy, rng: np.random.Generator, stratum: Stratum, apical_fraction: float
) -> Pneumothorax:
    """A pneumothorax whose area (fraction of the image) is drawn log-uniformly within `stratum`."""
    side: Side = "right" if rng.random() < 0.5 else "left"
    location: Literal["apical", "lateral"] = "apical" if rng.random() < apical_fraction else "lateral"
    lo, hi = STRATUM_RANGES[stratum]
    target = math.exp(rng.uniform(math.log(lo * 1.05), math.log(hi * 0.95)))
    n = len(anatomy.lungs[side])
    half = {
        "small": rng.uniform(0.05, 0.10),
        "medium": rng.uniform(0.08, 0.15),
        "large": rng.uniform(0.13, 0.22),
    }[stratum]
    idx = _arc_indices(n, anatomy.lateral_end[side], location, rng, half)
    # Area grows monotonically with depth: bisect for the target; widen the arc if even 0.8 is too little.
    for _ in range(4):
        if _build(anatomy, side, idx, 0.8, location).area_fraction >= target:
            break
        half *= 1.3
        idx = _arc_indices(n, anatomy.lateral_end[side], location, rng, half)
    lo_d, hi_d = 0.0, 0.8
    for _ in range(22):
        mid = 0.5 * (lo_d + hi_d)
        if _build(anatomy, side, idx, mid, location).area_fraction < target:
            lo_d = mid
        else:
            hi_d = mid
    return _build(anatomy, side, idx, hi_d, location)
