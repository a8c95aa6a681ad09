"""Procedural chest anatomy: lung fields, heart, mediastinum, bones, in normalised image coordinates.

The standard radiographic display is used: the patient's right side is on the image's left. Shapes
are built in a canonical frame from a patient's body habitus (`Habitus`, drawn once per patient so
follow-up studies of one patient look alike) and the view (AP magnifies the heart and projects the
scapulae over the lungs), then moved by a `Pose` (mild rotation, scale, shift).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from triage.synth.geometry import Points, Pose, bezier, cubic, ellipse, resample

Side = Literal["right", "left"]
View = Literal["AP", "PA"]
SIDES: tuple[Side, Side] = ("right", "left")


def _sign(side: Side) -> float:
    """Image-x direction of a patient side measured from the midline: right lung is on image left."""
    return -1.0 if side == "right" else 1.0


@dataclass(frozen=True)
class Habitus:
    """Per-patient body shape, in canonical normalised units."""

    width: float  # thorax width factor around the midline
    apex_y: float  # height of the lung apices
    dome_y: float  # right hemidiaphragm dome (the left one lies lower)
    left_dome_drop: float
    lateral_u: float  # distance of the lateral lung wall from the midline
    heart_scale: float
    hilum_y: float
    rib_spacing: float
    rib_width: float
    female: bool
    gastric_bubble: bool

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Habitus:
        return cls(
            width=float(rng.uniform(0.90, 1.06)),
            apex_y=float(rng.normal(0.145, 0.012)),
            dome_y=float(rng.normal(0.655, 0.03)),
            left_dome_drop=float(rng.uniform(0.01, 0.04)),
            lateral_u=float(rng.uniform(0.345, 0.385)),
            heart_scale=float(rng.normal(1.0, 0.08)),
            hilum_y=float(rng.normal(0.40, 0.015)),
            rib_spacing=float(rng.uniform(0.054, 0.062)),
            rib_width=float(rng.uniform(0.014, 0.018)),
            female=bool(rng.random() < 0.5),
            gastric_bubble=bool(rng.random() < 0.6),
        )


@dataclass(frozen=True)
class Rib:
    path: Points
    width: float


@dataclass(frozen=True)
class Anatomy:
    """All structures, already posed, in normalised image coordinates."""

    body: Points
    lungs: dict[Side, Points]  # closed polygons, resampled, first point at the apex
    lateral_end: dict[Side, int]  # index in the lung polygon where the lateral wall ends (costophrenic angle)
    hila: dict[Side, tuple[float, float]]
    apices: dict[Side, tuple[float, float]]
    costophrenic: dict[Side, tuple[float, float]]
    heart: Points
    mediastinum: Points
    aortic_knob: Points
    trachea: list[Points]  # trachea and the two main bronchi, as polylines
    spine: Points  # midline polyline
    spine_width: float
    vertebra_y: list[float]  # disc levels along the spine
    posterior_ribs: list[Rib]
    anterior_ribs: list[Rib]
    clavicles: list[Rib]
    scapulae: list[Points]
    humeral_heads: list[Points]
    breasts: list[Points]
    gastric_bubble: Points | None
    lateral_u: float
    apex_y: float
    dome_y: dict[Side, float]
    pose: Pose


def _lung_outline(side: Side, h: Habitus, view: View) -> tuple[Points, int]:
    """A lung field as a closed polygon starting at the apex, and the index of the costophrenic angle."""
    s = _sign(side)
    heart = h.heart_scale * (1.15 if view == "AP" else 1.0)
    dome = h.dome_y + (h.left_dome_drop if side == "left" else 0.0)
    u_lat = h.lateral_u
    u_apex = 0.16 if side == "right" else 0.155
    y_apex = h.apex_y + (0.005 if side == "left" else 0.0)
    y_cp = dome + 0.075
    u_low = (0.08 if side == "right" else 0.165) * heart  # cardiophrenic angle
    u_hil = 0.065 if side == "right" else 0.07
    u_up = 0.048

    def pt(u: float, y: float) -> tuple[float, float]:
        return (0.5 + s * u * h.width, y)

    lateral = cubic(
        pt(u_apex, y_apex),
        pt(u_apex + 0.11, y_apex - 0.004),
        pt(u_lat + 0.01, y_apex + 0.22),
        pt(u_lat, y_cp),
        60,
    )
    diaphragm = cubic(
        pt(u_lat, y_cp),
        pt(u_lat - 0.07, dome - 0.035),
        pt(u_low + 0.09, dome - 0.03),
        pt(u_low, dome + 0.02),
        40,
    )
    heart_border = cubic(
        pt(u_low, dome + 0.02),
        pt(u_low + 0.045 * heart, dome - 0.09),
        pt(u_hil + 0.025, h.hilum_y + 0.07),
        pt(u_hil, h.hilum_y),
        30,
    )
    if side == "left":  # aortic knob bulge above the hilum
        upper = cubic(
            pt(u_hil, h.hilum_y),
            pt(u_hil + 0.03, h.hilum_y - 0.09),
            pt(u_up - 0.005, y_apex + 0.13),
            pt(u_up + 0.012, y_apex + 0.045),
            30,
        )
    else:
        upper = cubic(
            pt(u_hil, h.hilum_y),
            pt(u_hil - 0.012, h.hilum_y - 0.08),
            pt(u_up, y_apex + 0.12),
            pt(u_up + 0.012, y_apex + 0.045),
            30,
        )
    closing = bezier(
        pt(u_up + 0.012, y_apex + 0.045), pt(u_up + 0.03, y_apex - 0.012), pt(u_apex, y_apex), 16
    )
    pieces = [lateral, diaphragm[1:], heart_border[1:], upper[1:], closing[1:-1]]
    outline = np.concatenate(pieces)
    lateral_length = float(np.linalg.norm(np.diff(lateral, axis=0), axis=1).sum())
    total = float(np.linalg.norm(np.diff(np.vstack([outline, outline[:1]]), axis=0), axis=1).sum())
    n = 360
    closed = resample(np.vstack([outline, outline[:1]]), n + 1)[:-1]
    return closed, round(n * lateral_length / total)


def _ribs(side: Side, h: Habitus) -> tuple[list[Rib], list[Rib]]:
    s = _sign(side)

    def pt(u: float, y: float) -> tuple[float, float]:
        return (0.5 + s * u * h.width, y)

    posterior = []
    for k in range(10):
        y0 = h.apex_y - 0.015 + k * h.rib_spacing
        reach = h.lateral_u + 0.035 if k > 0 else 0.20
        drop = 0.055 + 0.012 * k
        path = cubic(
            pt(0.035, y0),
            pt(0.11, y0 - 0.035),
            pt(reach + 0.025, y0 + 0.02),
            pt(reach - 0.01, y0 + drop + 0.05),
            40,
        )
        posterior.append(Rib(path, h.rib_width * (0.8 if k == 0 else 1.0)))
    anterior = []
    for k in range(6):
        y0 = h.apex_y + 0.045 + k * 0.075
        path = cubic(
            pt(h.lateral_u + 0.025, y0),
            pt(h.lateral_u - 0.06, y0 + 0.01),
            pt(0.20, y0 + 0.07),
            pt(0.13, y0 + 0.10 + 0.01 * k),
            30,
        )
        anterior.append(Rib(path, h.rib_width * 0.9))
    return posterior, anterior


def build_anatomy(h: Habitus, view: View, pose: Pose, rng: np.random.Generator) -> Anatomy:
    """Build every structure for one image of a patient with habitus `h`."""
    heart = h.heart_scale * (1.15 if view == "AP" else 1.0)
    lungs: dict[Side, Points] = {}
    lateral_end: dict[Side, int] = {}
    posterior: list[Rib] = []
    anterior: list[Rib] = []
    clavicles: list[Rib] = []
    scapulae: list[Points] = []
    humeral: list[Points] = []
    breasts: list[Points] = []
    hila: dict[Side, tuple[float, float]] = {}
    apices: dict[Side, tuple[float, float]] = {}
    costo: dict[Side, tuple[float, float]] = {}
    domes: dict[Side, float] = {}
    clav_lift = -0.03 if view == "AP" else 0.0
    for side in SIDES:
        s = _sign(side)
        outline, lat_end = _lung_outline(side, h, view)
        lungs[side] = pose.apply(outline)
        lateral_end[side] = lat_end
        apices[side] = (float(lungs[side][0, 0]), float(lungs[side][0, 1]))
        costo[side] = (float(lungs[side][lat_end, 0]), float(lungs[side][lat_end, 1]))
        hila[side] = pose.apply_xy(0.5 + s * 0.10 * h.width, h.hilum_y + 0.02)
        domes[side] = h.dome_y + (h.left_dome_drop if side == "left" else 0.0)
        post, ant = _ribs(side, h)
        posterior += [Rib(pose.apply(r.path), r.width) for r in post]
        anterior += [Rib(pose.apply(r.path), r.width) for r in ant]
        y_c = h.apex_y + 0.035 + clav_lift
        clav = cubic(
            (0.5 + s * 0.035, y_c + 0.01),
            (0.5 + s * 0.14 * h.width, y_c + 0.035),
            (0.5 + s * 0.25 * h.width, y_c - 0.05),
            (0.5 + s * 0.36 * h.width, y_c - 0.045),
            40,
        )
        clavicles.append(Rib(pose.apply(clav), 0.024))
        # AP: scapulae project over the lateral upper lungs; PA: rotated out of the lung fields.
        u0 = h.lateral_u * h.width - (0.06 if view == "AP" else -0.03)
        y0 = h.apex_y
        scap = np.array(
            [
                (0.5 + s * u0, y0 + 0.01),
                (0.5 + s * (u0 + 0.13), y0 - 0.01),
                (0.5 + s * (u0 + 0.1), y0 + 0.20),
                (0.5 + s * (u0 + 0.03), y0 + 0.34),
            ]
        )
        scapulae.append(pose.apply(resample(np.vstack([scap, scap[:1]]), 40)))
        humeral.append(pose.apply(ellipse(0.5 + s * 0.48 * h.width, h.apex_y - 0.01, 0.055, 0.06)))
        if h.female:
            breasts.append(pose.apply(ellipse(0.5 + s * 0.25 * h.width, domes[side] + 0.04, 0.14, 0.10)))
    heart_poly = ellipse(
        0.5 + 0.045 * heart, h.dome_y - 0.05, 0.135 * heart * h.width, 0.11 * heart, angle=-0.3
    )
    medi = np.array(
        [
            (0.5 - 0.07, 0.0),
            (0.5 + 0.07, 0.0),
            (0.5 + 0.075, h.hilum_y),
            (0.5 + 0.10, h.dome_y),
            (0.5 - 0.09, h.dome_y),
            (0.5 - 0.075, h.hilum_y),
        ]
    )
    knob = ellipse(0.5 + 0.06 * h.width, h.hilum_y - 0.095, 0.032, 0.026)
    carina_y = h.hilum_y - 0.06
    trachea = [
        np.array([(0.5, 0.0), (0.5 + 0.004, carina_y)]),
        bezier((0.5 + 0.004, carina_y), (0.5 - 0.03, carina_y + 0.02), (0.5 - 0.075, carina_y + 0.05)),
        bezier((0.5 + 0.004, carina_y), (0.5 + 0.04, carina_y + 0.025), (0.5 + 0.085, carina_y + 0.07)),
    ]
    spine = np.array([(0.5, 0.0), (0.5, 1.0)])
    vertebra_y = [float(v) for v in np.arange(h.apex_y - 0.1, 1.0, 0.042) + rng.uniform(0, 0.042)]
    u_body = h.lateral_u * h.width
    body = np.array(
        [
            (0.5 - 0.085, -0.02),
            (0.5 - 0.095, h.apex_y - 0.06),
            (0.5 - 0.3, h.apex_y - 0.09),
            (-0.05, h.apex_y - 0.06),
            (-0.05, h.apex_y + 0.12),
            (0.5 - u_body - 0.045, h.apex_y + 0.2),
            (0.5 - u_body - 0.055, 0.6),
            (0.5 - u_body - 0.08, 1.05),
            (0.5 + u_body + 0.08, 1.05),
            (0.5 + u_body + 0.055, 0.6),
            (0.5 + u_body + 0.045, h.apex_y + 0.2),
            (1.05, h.apex_y + 0.12),
            (1.05, h.apex_y - 0.06),
            (0.5 + 0.3, h.apex_y - 0.09),
            (0.5 + 0.095, h.apex_y - 0.06),
            (0.5 + 0.085, -0.02),
        ]
    )
    bubble = None
    if h.gastric_bubble:
        bubble = pose.apply(ellipse(0.5 + 0.16 * h.width, domes["left"] + 0.055, 0.045, 0.028))
    return Anatomy(
        body=pose.apply(body),
        lungs=lungs,
        lateral_end=lateral_end,
        hila=hila,
        apices=apices,
        costophrenic=costo,
        heart=pose.apply(heart_poly),
        mediastinum=pose.apply(medi),
        aortic_knob=pose.apply(knob),
        trachea=[pose.apply(t) for t in trachea],
        spine=pose.apply(spine),
        spine_width=0.07,
        vertebra_y=vertebra_y,
        posterior_ribs=posterior,
        anterior_ribs=anterior,
        clavicles=clavicles,
        scapulae=scapulae,
        humeral_heads=humeral,
        breasts=breasts,
        gastric_bubble=bubble,
        lateral_u=h.lateral_u * h.width,
        apex_y=h.apex_y,
        dome_y=domes,
        pose=pose,
    )
