"""Sampling one synthetic case: anatomy, label, lesion, confounders and exposure — geometry only.

Everything random is drawn here from one generator, so a case is a pure function of its seed; the
renderer then draws it at any size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from triage.synth.anatomy import SIDES, Anatomy, Habitus, View, build_anatomy
from triage.synth.config import PhantomConfig
from triage.synth.devices import (
    CornerMarker,
    Drain,
    EcgLead,
    SideMarker,
    sample_corner_marker,
    sample_drain,
    sample_ecg,
    sample_marker,
)
from triage.synth.geometry import Pose
from triage.synth.lesions import STRATA, Pneumothorax, Stratum, Vessel, sample_pneumothorax, vessel_tree


@dataclass(frozen=True)
class Case:
    config: PhantomConfig
    label: bool
    view: View
    anatomy: Anatomy
    pneumothorax: Pneumothorax | None
    stratum: Stratum | None  # the intended size stratum; the written metadata uses the measured area
    vessels: list[Vessel]
    drain: Drain | None
    ecg: list[EcgLead]
    marker: SideMarker | None
    exposure: float  # k in D = 1 − exp(−k·T)
    gamma: float
    blur_px: float  # system blur, sigma in pixels at 1024 px
    render_seed: int
    corner_marker: CornerMarker | None = None  # the positive control's confounder

    @property
    def rotation_deg(self) -> float:
        return math.degrees(self.anatomy.pose.angle_rad)


def sample_case(config: PhantomConfig, habitus: Habitus, label: bool, rng: np.random.Generator) -> Case:
    """Draw one case for a patient of `habitus`; `label` says whether it has a pneumothorax."""
    view: View = "AP" if rng.random() < config.ap_fraction else "PA"
    pose = Pose(
        angle_rad=math.radians(float(rng.uniform(-config.rotation_deg, config.rotation_deg))),
        scale=float(rng.uniform(0.93, 1.05)),
        shift=(float(rng.normal(0, 0.015)), float(rng.normal(0.01, 0.02))),
    )
    anatomy = build_anatomy(habitus, view, pose, rng)
    vessels = [seg for side in SIDES for seg in vessel_tree(anatomy, side, rng, config.marking_density)]
    ptx = None
    stratum: Stratum | None = None
    if label:
        weights = np.asarray(config.size_weights, dtype=np.float64)
        stratum = STRATA[int(rng.choice(3, p=weights / weights.sum()))]
        ptx = sample_pneumothorax(anatomy, rng, stratum, config.apical_fraction)
    p_drain = config.drain_given_positive if label else config.drain_given_negative
    drain = None
    if rng.random() < p_drain:
        side = ptx.side if ptx is not None and rng.random() < 0.9 else SIDES[int(rng.integers(2))]
        drain = sample_drain(anatomy, side, rng)
    p_ecg = config.ecg_given_positive if label else config.ecg_given_negative
    ecg = sample_ecg(anatomy, rng) if rng.random() < p_ecg else []
    marker = sample_marker(rng) if rng.random() < config.side_marker else None
    lo, hi = config.blur_px
    exposure = float(rng.uniform(1.35, 1.9) * (0.92 if view == "AP" else 1.0))
    gamma = float(rng.uniform(0.85, 1.2))
    blur = float(rng.uniform(lo, hi))
    render_seed = int(rng.integers(2**63 - 1))
    corner = None
    if config.corner_marker_given_positive > 0 or config.corner_marker_given_negative > 0:
        p_corner = config.corner_marker_given_positive if label else config.corner_marker_given_negative
        if rng.random() < p_corner:  # drawn last: with the option off, no other draw changes
            corner = sample_corner_marker(rng)
    return Case(
        config=config,
        label=label,
        view=view,
        anatomy=anatomy,
        pneumothorax=ptx,
        stratum=stratum,
        vessels=vessels,
        drain=drain,
        ecg=ecg,
        marker=marker,
        exposure=exposure,
        gamma=gamma,
        blur_px=blur,
        render_seed=render_seed,
        corner_marker=corner,
    )
