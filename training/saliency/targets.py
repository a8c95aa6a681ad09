"""Target heatmaps for the saliency U-Net: the phantom's reading heatmaps, blurred lesion masks, or
Gaussian-blurred eye-gaze fixations from a CSV file. numpy + scipy only.

Eye-gaze fixation CSV (``--target gaze --gaze-csv FILE``), one row per fixation, with a header::

    image_id,x,y[,weight]
    1.2.826.0.1.3680043.8.498.1234,512.5,300
    1.2.826.0.1.3680043.8.498.1234,620,410,0.35

* ``image_id``: the data set's id (SOPInstanceUID in the SIIM-ACR layout, the file stem in the folder
  format);
* ``x``, ``y``: the fixation in pixels of the *source* image (the DICOM / PNG as stored): ``x`` the column
  from the left edge, ``y`` the row from the top, 0-based, fractions allowed; valid: 0 ≤ x < width,
  0 ≤ y < height;
* ``weight`` (optional, default 1): the fixation's weight, e.g. its duration in seconds; > 0.

The heatmap of an image is Σ weight·exp(−d²/2σ²) over its fixations, σ in source pixels (``--gaze-sigma``;
the source documents used σ ≈ 150 px on ~2500 px radiographs), divided by its maximum. Images without
fixations have *no* target and do not count in the map loss. A row naming an unknown image, a coordinate
outside the image, or a non-numeric value is a one-line error before training starts.

Lesion targets (``--target lesion``): the pneumothorax mask blurred with a Gaussian of σ source pixels,
divided by its maximum; negative images have an all-zero target (meaning "nothing to look at"), which the
BCE and MSE losses use and KL skips.

All targets are built directly on the model's grid: coordinates and σ go through the same letterbox
geometry as the image (:class:`triage.cascade.preprocess.Geometry`).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from scipy.ndimage import gaussian_filter

from triage.cascade.preprocess import Geometry

FloatMap = NDArray[np.float32]
GAZE_COLUMNS = ("image_id", "x", "y")
DEFAULT_GAZE_SIGMA = 150.0


class TargetError(ValueError):
    """A target file or setting that cannot be used; the message is one line naming the problem."""


@dataclass(frozen=True)
class Fixation:
    x: float
    y: float
    weight: float = 1.0


def read_gaze_csv(path: Path, sizes: Mapping[str, tuple[int, int]]) -> dict[str, list[Fixation]]:
    """Fixations per image id, validated against ``sizes`` (id → source (height, width)).

    Raises TargetError (one line, with the CSV line number) for a missing column, an unknown image id,
    a non-numeric or non-finite value, a weight ≤ 0, or a coordinate outside the image.
    """
    path = Path(path)
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise TargetError(f"--gaze-csv {path}: cannot read ({exc.strerror or exc})") from exc
    out: dict[str, list[Fixation]] = {}
    with handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in GAZE_COLUMNS if c not in header]
        if missing:
            raise TargetError(
                f"{path}: missing column(s) {missing}; the header must be image_id,x,y[,weight], got {header}"
            )
        for line, raw in enumerate(reader, start=2):
            row = {str(k).strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            image_id = row["image_id"]
            if image_id not in sizes:
                raise TargetError(f"{path} line {line}: image_id {image_id!r} is not in the data set")
            try:
                x, y = float(row["x"]), float(row["y"])
                weight = float(row["weight"]) if row.get("weight") else 1.0
            except ValueError as exc:
                raise TargetError(f"{path} line {line}: x, y and weight must be numbers ({exc})") from exc
            if not all(math.isfinite(v) for v in (x, y, weight)) or weight <= 0:
                raise TargetError(
                    f"{path} line {line}: x, y must be finite and weight > 0, got {x}, {y}, {weight}"
                )
            height, width = sizes[image_id]
            if not (0 <= x < width and 0 <= y < height):
                raise TargetError(
                    f"{path} line {line}: fixation (x={x:g}, y={y:g}) of {image_id} lies outside its "
                    f"{width}x{height} image (valid: 0 <= x < {width}, 0 <= y < {height})"
                )
            out.setdefault(image_id, []).append(Fixation(x, y, weight))
    if not out:
        raise TargetError(f"{path}: no fixations")
    return out


def _grid_scale(geometry: Geometry) -> tuple[float, float]:
    _, _, ch, cw = geometry.box
    return ch / geometry.src_shape[0], cw / geometry.src_shape[1]


def gaze_heatmap(fixations: list[Fixation], geometry: Geometry, sigma_px: float) -> FloatMap:
    """Σ weight·Gaussian(σ) of the fixations on the model grid, divided by its maximum: (H, W) in [0, 1]."""
    if sigma_px <= 0:
        raise TargetError(f"--gaze-sigma must be > 0 pixels, got {sigma_px}")
    gh, gw = geometry.grid
    top, left, _, _ = geometry.box
    sy, sx = _grid_scale(geometry)
    yy = np.arange(gh, dtype=np.float32)[:, None]
    xx = np.arange(gw, dtype=np.float32)[None, :]
    sig_y, sig_x = max(sigma_px * sy, 1e-3), max(sigma_px * sx, 1e-3)
    heat = np.zeros((gh, gw), np.float32)
    for f in fixations:
        # pixel centres: source pixel x maps to grid coordinate (x + 0.5)·s − 0.5 inside the content box
        cy = top + (f.y + 0.5) * sy - 0.5
        cx = left + (f.x + 0.5) * sx - 0.5
        heat += np.float32(f.weight) * np.exp(
            -((yy - cy) ** 2) / (2 * sig_y**2) - ((xx - cx) ** 2) / (2 * sig_x**2)
        )
    peak = float(heat.max())
    return heat / np.float32(peak) if peak > 0 else heat


def lesion_heatmap(
    grid_mask: NDArray[np.bool_] | NDArray[np.uint8], geometry: Geometry, sigma_px: float
) -> FloatMap:
    """A lesion mask on the grid blurred with σ source pixels, divided by its maximum (zeros if empty)."""
    if sigma_px < 0:
        raise TargetError(f"--target-sigma must be >= 0 pixels, got {sigma_px}")
    m = np.asarray(grid_mask, dtype=np.float32)
    if not m.any():
        return np.zeros_like(m)
    sy, sx = _grid_scale(geometry)
    blurred = gaussian_filter(m, sigma=(sigma_px * sy, sigma_px * sx)) if sigma_px > 0 else m
    out: FloatMap = (blurred / np.float32(blurred.max())).astype(np.float32)
    return out
