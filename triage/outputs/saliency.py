"""Outputs of a bundle's saliency model, written beside the classifier's CAM.

* :func:`render_saliency_panel` — a PNG with two overlays side by side: the classifier's CAM (left) and the
  saliency model's map (right), each with the mask outline and a title, above one caption strip.
* :func:`write_saliency_sc` — a greyscale DICOM Secondary Capture of the saliency model's map on the
  source image's grid (shrunk to at most ``max_side`` px, aspect kept): MONOCHROME2, 8 bits, pixel value =
  round(255 × saliency), so a viewer shows high saliency bright. It keeps the source's Patient and Study
  modules, references the source image, and has its own series (SeriesNumber 9104).

Why not a Parametric Map: radiographs have no Frame of Reference, and highdicom (0.28) cannot build a
Parametric Map without plane positions (its dimension index breaks); the Secondary Capture is the object
every PACS displays. The map's float values are recoverable as pixel/255 (stated in
DerivationDescription).
"""

from __future__ import annotations

import logging
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from PIL import Image, ImageDraw

from triage.outputs.atomic import atomic_save_dataset
from triage.outputs.dicom_objects import BundleInfo
from triage.outputs.overlay import _draw_strip, _font, output_size, render_overlay
from triage.outputs.sc import derived_sc

logger = logging.getLogger(__name__)

TITLE_RGB = (240, 240, 240)
GAP_PX = 6
MAX_SIDE = 1024


def _titled(panel: np.ndarray, title: str) -> np.ndarray:
    """``panel`` (H, W, 3) with ``title`` drawn into its top-left corner on a dark box."""
    img = Image.fromarray(panel)
    draw = ImageDraw.Draw(img)
    size = int(np.clip(round(panel.shape[1] / 28), 10, 22))
    font = _font(size)
    width = int(draw.textlength(title, font=font))
    draw.rectangle((0, 0, width + 2 * 4, size + 2 * 4), fill=(24, 24, 24))
    draw.text((4, 3), title, fill=TITLE_RGB, font=font)
    return np.asarray(img, dtype=np.uint8)


def render_saliency_panel(
    image: np.ndarray,
    mask: np.ndarray | None,
    cam: np.ndarray | None,
    saliency: np.ndarray,
    *,
    caption: str = "",
    max_side: int = MAX_SIDE,
    shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """uint8 RGB: "classifier CAM" | "saliency model" overlays side by side, then the caption strip.

    image: float HxW in [0, 1] (or a smaller copy of it, with the source grid in ``shape``, as in
    :func:`render_overlay`); mask: bool with the source grid's shape, or None; cam, saliency: float maps
    in [0, 1] at any resolution (cam may be None: that panel then shows the radiograph alone). The result
    fits in ``max_side`` px wide (two panels of half the width each). Raises ValueError for bad arrays.
    """
    half = max(64, (max_side - GAP_PX) // 2)
    grid = shape if shape is not None else np.asarray(image).shape[:2]
    panels = []
    for title, heat in (("classifier CAM", cam), ("saliency model", saliency)):
        rendered = render_overlay(image, mask, heat, max_side=half, caption="", shape=grid)
        height = output_size(grid, half)[0]
        panels.append(_titled(np.ascontiguousarray(rendered[:height]), title))
    gap = np.full((panels[0].shape[0], GAP_PX, 3), 24, np.uint8)
    top = np.concatenate([panels[0], gap, panels[1]], axis=1)
    strip = _draw_strip(top.shape[1], caption, with_mask=mask is not None, with_saliency=True)
    out: np.ndarray = np.concatenate([top, strip], axis=0)
    return out


def _grey(saliency: np.ndarray, shape: tuple[int, int], max_side: int) -> np.ndarray:
    """uint8 (h, w): the map resized to the source ``shape`` shrunk to ``max_side`` (aspect kept)."""
    s = np.asarray(saliency)
    if s.ndim != 2 or not np.issubdtype(s.dtype, np.floating):
        raise ValueError(f"saliency must be a float HxW array; got {s.dtype} {s.shape}")
    lo, hi = float(np.min(s)), float(np.max(s))
    if not (lo >= 0.0 and hi <= 1.0):
        raise ValueError(f"saliency values span {lo}..{hi}; valid range is [0, 1]")
    scale = min(1.0, max_side / max(shape))
    h, w = max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))
    resized = Image.fromarray(s.astype(np.float32), mode="F").resize((w, h), Image.Resampling.BILINEAR)
    out: np.ndarray = np.rint(np.clip(np.asarray(resized), 0.0, 1.0) * 255.0).astype(np.uint8)
    return out


def build_saliency_sc(
    source: pydicom.Dataset, saliency: np.ndarray, *, bundle: BundleInfo, max_side: int = MAX_SIDE
) -> hd.sc.SCImage:
    """The greyscale SC dataset of ``saliency`` (float, [0, 1], any resolution); see the module."""
    pixels = _grey(saliency, (int(source.Rows), int(source.Columns)), max_side)
    sc = derived_sc(
        source,
        pixels,
        kind="saliency",
        photometric=hd.PhotometricInterpretationValues.MONOCHROME2,
        burned_in=False,
        description=(
            "pneumothorax saliency map of the bundle's saliency model; pixel value = 255 x saliency (0..1)"
        ),
        bundle=bundle,
    )
    sc.WindowCenter, sc.WindowWidth = 127.5, 256.0
    return sc


def write_saliency_sc(
    source: pydicom.Dataset, saliency: np.ndarray, path: Path, *, bundle: BundleInfo
) -> str:
    """Write the saliency SC to ``path`` atomically; returns its SOPInstanceUID (deterministic in the
    source SOPInstanceUID + bundle hash). Raises ValueError for a bad map, TriageError(INVALID_UID /
    WRITE_FAILED)."""
    sc = build_saliency_sc(source, saliency, bundle=bundle)
    atomic_save_dataset(path, sc)
    logger.info("wrote saliency SC %s (%dx%d)", path, sc.Columns, sc.Rows)
    return str(sc.SOPInstanceUID)
