"""Knobs of the chest-radiograph phantom: one frozen dataclass, validated, written next to the outputs.

Defaults are chosen so that large pneumothoraces are obvious and small ones (< 0.5 % of the image) are
genuinely hard: a faint visceral pleural line and a slight loss of lung markings, under noise.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

Compression = Literal["none", "rle", "j2k"]
COMPRESSIONS: tuple[Compression, ...] = ("none", "rle", "j2k")


class ConfigError(ValueError):
    """A knob outside its valid range; the message names the knob, the value and the range."""


@dataclass(frozen=True)
class PhantomConfig:
    """Everything that decides what the synthetic studies look like.

    Probabilities are per image. Contrasts are in the phantom's attenuation units (the soft tissue of
    the mid-chest is about 1.0; an aerated lung removes about 0.55 of it).
    """

    # --- pneumothorax appearance (difficulty) ---
    pleural_line_contrast: float = 0.10
    """Brightness of the visceral pleural line in display units (a ~1.5 px line at 1024 px)."""
    ptx_lucency: float = 0.09
    """Extra lucency inside the pneumothorax (air without lung tissue)."""
    collapse_density: float = 0.06
    """Extra density of the collapsed lung beside a pneumothorax (scaled by its size)."""
    size_weights: tuple[float, float, float] = (0.35, 0.40, 0.25)
    """Relative frequency of small (< 0.5 % of the image), medium (0.5-2 %) and large (> 2 %) cases."""
    apical_fraction: float = 0.65
    """Fraction of pneumothoraces centred at the apex (the rest lie along the lateral lung edge)."""

    # --- image quality ---
    marking_density: float = 1.0
    """Scales the number and contrast of lung markings (vessels). 0 removes them."""
    noise: float = 0.018
    """Standard deviation of quantum-like noise in display units (0..1) at 1024 px."""
    blur_px: tuple[float, float] = (0.6, 1.6)
    """Range of the system blur (Gaussian sigma in pixels at 1024 px)."""
    rotation_deg: float = 4.0
    """Maximum absolute patient rotation in the image plane."""

    # --- confounders, conditioned on the label ---
    drain_given_positive: float = 0.60
    drain_given_negative: float = 0.05
    ecg_given_positive: float = 0.35
    ecg_given_negative: float = 0.25
    side_marker: float = 0.85
    corner_marker_given_positive: float = 0.0
    """The positive control's confounder (a bright square in the lower-right corner, outside the lungs):
    its probability in positive and negative images. Both 0 (the default) draws nothing and leaves every
    other random draw as it was."""
    corner_marker_given_negative: float = 0.0

    # --- acquisition mix ---
    ap_fraction: float = 0.40
    """Fraction of AP (portable, supine-ish) views; the rest are PA."""
    dx_fraction: float = 0.50
    """Fraction of DX (digital) images; the rest are CR."""
    monochrome1_fraction: float = 0.35
    compression: Compression = "none"

    def __post_init__(self) -> None:
        probabilities = (
            "apical_fraction",
            "drain_given_positive",
            "drain_given_negative",
            "ecg_given_positive",
            "ecg_given_negative",
            "side_marker",
            "corner_marker_given_positive",
            "corner_marker_given_negative",
            "ap_fraction",
            "dx_fraction",
            "monochrome1_fraction",
        )
        for name in probabilities:
            _check_range(name, getattr(self, name), 0.0, 1.0)
        for name in ("pleural_line_contrast", "ptx_lucency", "collapse_density"):
            _check_range(name, getattr(self, name), 0.0, 2.0)
        _check_range("marking_density", self.marking_density, 0.0, 3.0)
        _check_range("noise", self.noise, 0.0, 0.5)
        _check_range("rotation_deg", self.rotation_deg, 0.0, 20.0)
        lo, hi = self.blur_px
        if not 0.0 <= lo <= hi <= 10.0:
            raise ConfigError(f"blur_px must satisfy 0 <= low <= high <= 10, got {self.blur_px}")
        if len(self.size_weights) != 3 or min(self.size_weights) < 0 or sum(self.size_weights) <= 0:
            raise ConfigError(
                f"size_weights must be three non-negative weights (small, medium, large) with a "
                f"positive sum, got {self.size_weights}"
            )
        if self.compression not in COMPRESSIONS:
            raise ConfigError(f"compression must be one of {COMPRESSIONS}, got {self.compression!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PhantomConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown phantom settings {unknown}; valid: {sorted(known)}")
        fixed: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**fixed)


def _check_range(name: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be in [{lo}, {hi}], got {value}")
