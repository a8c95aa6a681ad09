"""Confounders: chest drain, ECG leads, the side marker and the positive control's corner marker, as
geometry to draw.

A chest drain accompanies most treated pneumothoraces, so classifiers learn "tube ⇒ pneumothorax";
the phantom draws one with a label-conditioned probability to make that shortcut measurable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from triage.synth.anatomy import Anatomy, Side
from triage.synth.geometry import Points, bezier, cubic, resample


@dataclass(frozen=True)
class Drain:
    side: Side
    path: Points  # centre line from the image edge to the tip, evenly resampled
    width: float  # tube diameter, normalised
    side_holes: list[float]  # positions along the path (0..1) where the radio-opaque stripe is interrupted


@dataclass(frozen=True)
class EcgLead:
    centre: tuple[float, float]
    radius: float
    wire: Points


@dataclass(frozen=True)
class SideMarker:
    letter: Literal["L", "R"]
    box: tuple[float, float, float]  # x, y of the top-left corner and the side length, normalised


@dataclass(frozen=True)
class CornerMarker:
    """The positive control's planted confounder (seeds.md B, experiment 2): a solid square token in the
    lower-right corner, on the detector (it does not move with the patient), entirely outside the lungs."""

    box: tuple[float, float, float]  # x, y of the top-left corner and the side length, normalised

    def polygon(self) -> Points:
        x, y, a = self.box
        return np.array([(x, y), (x + a, y), (x + a, y + a), (x, y + a)])


def sample_corner_marker(rng: np.random.Generator) -> CornerMarker:
    """A 0.06-wide square whose top-left corner lies in [0.88, 0.91]² (it ends before 0.97)."""
    return CornerMarker((float(rng.uniform(0.88, 0.91)), float(rng.uniform(0.88, 0.91)), 0.06))


def sample_drain(anatomy: Anatomy, side: Side, rng: np.random.Generator) -> Drain:
    """An intercostal drain entering laterally and running up towards the apex."""
    s = -1.0 if side == "right" else 1.0
    wall = anatomy.lateral_u + 0.035
    y_in = float(rng.uniform(0.52, 0.66))
    tip_y = anatomy.apex_y + float(rng.uniform(0.05, 0.14))
    tip_u = float(rng.uniform(0.12, wall - 0.08))
    outside = bezier(
        (0.5 + s * 0.56, y_in + rng.uniform(0.02, 0.12)),
        (0.5 + s * (wall + 0.06), y_in + 0.02),
        (0.5 + s * wall, y_in),
        20,
    )
    inside = cubic(
        (0.5 + s * wall, y_in),
        (0.5 + s * (wall - 0.06), y_in - 0.12),
        (0.5 + s * (tip_u + 0.08), tip_y + 0.12),
        (0.5 + s * tip_u, tip_y),
        40,
    )
    path = anatomy.pose.apply(resample(np.vstack([outside, inside[1:]]), 160))
    holes = sorted(float(v) for v in rng.uniform(0.80, 0.98, int(rng.integers(2, 5))))
    return Drain(side, path, float(rng.uniform(0.009, 0.013)), holes)


_ELECTRODE_SITES = ((-0.30, 0.10), (0.30, 0.10), (-0.36, 0.66), (0.36, 0.70), (0.05, 0.80), (0.20, 0.45))


def sample_ecg(anatomy: Anatomy, rng: np.random.Generator) -> list[EcgLead]:
    """Three to five ECG electrodes with their wires running off the image."""
    n = int(rng.integers(3, 6))
    chosen = rng.choice(len(_ELECTRODE_SITES), size=n, replace=False)
    leads = []
    for k in chosen:
        du, y = _ELECTRODE_SITES[int(k)]
        cx = 0.5 + du + float(rng.normal(0, 0.02))
        cy = y + anatomy.apex_y - 0.10 + float(rng.normal(0, 0.02))
        end = (float(rng.choice([-0.02, 1.02])), float(rng.uniform(0.2, 1.0)))
        mid = (
            0.5 * (cx + end[0]) + float(rng.normal(0, 0.1)),
            0.5 * (cy + end[1]) + float(rng.normal(0, 0.1)),
        )
        wire = bezier((cx, cy), mid, end, 40)
        c = anatomy.pose.apply(np.array([[cx, cy]]))[0]
        leads.append(EcgLead((float(c[0]), float(c[1])), 0.012, anatomy.pose.apply(wire)))
    return leads


def sample_marker(rng: np.random.Generator) -> SideMarker:
    """A lead letter in an upper corner: 'L' on the image's right or 'R' on its left."""
    if rng.random() < 0.7:
        return SideMarker("L", (float(rng.uniform(0.86, 0.91)), float(rng.uniform(0.03, 0.08)), 0.05))
    return SideMarker("R", (float(rng.uniform(0.04, 0.09)), float(rng.uniform(0.03, 0.08)), 0.05))


def marker_strokes(marker: SideMarker) -> list[Points]:
    """The marker's letter as polylines inside its box (a square outline plus the letter)."""
    x, y, a = marker.box
    box = np.array([(x, y), (x + a, y), (x + a, y + a), (x, y + a), (x, y)])
    m = 0.22 * a
    left, right, top, bottom = x + m, x + a - m, y + m, y + a - m
    if marker.letter == "L":
        strokes = [np.array([(left, top), (left, bottom), (right, bottom)])]
    else:
        t = np.linspace(-np.pi / 2, np.pi / 2, 12)
        mid = 0.5 * (top + bottom)
        r = 0.5 * (mid - top)
        bowl = np.stack([left + 0.5 * (right - left) + r * np.cos(t) * 1.2, top + r + r * np.sin(t)], axis=1)
        strokes = [
            np.array([(left, bottom), (left, top), (left + 0.5 * (right - left), top)]),
            np.vstack([bowl, [(left, mid)]]),
            np.array([(left + 0.35 * (right - left), mid), (right, bottom)]),
        ]
    return [box, *strokes]
