"""From a source image to a model's input tensor, and from a model's output grid back to the source.

`letterbox` keeps the aspect ratio (pads the short side symmetrically, with 0 = black), `stretch`
resizes each axis independently. `Geometry` remembers what was done so that maps can be undone
exactly: crop the padding, then resize to the source shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from triage.bundle import ModelSpec

FloatImage = NDArray[np.float32]


@dataclass(frozen=True)
class Geometry:
    """How a (src_h, src_w) image sits in the (h, w) model grid: content box (top, left, height, width)."""

    src_shape: tuple[int, int]
    grid: tuple[int, int]
    box: tuple[int, int, int, int]


def as_pil(image: FloatImage) -> Image.Image:
    """``image`` as a PIL float ("F") image: a copy, ~half the cost of a resize at 2048², so a caller that
    resizes one image several times (one grid per model, the overlay) makes it once and passes it on."""
    return Image.fromarray(np.ascontiguousarray(image, dtype=np.float32), mode="F")


def resize(image: FloatImage, shape: tuple[int, int], pil: Image.Image | None = None) -> FloatImage:
    """Bilinear resize of a float32 image to (height, width); antialiased when shrinking (PIL).
    ``pil``: ``as_pil(image)`` if the caller has it already (same result, one copy fewer)."""
    if image.shape == shape:
        return image
    source = pil if pil is not None else as_pil(image)
    out = source.resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    return np.array(out, dtype=np.float32)


def content_shape(source: tuple[int, int], grid: tuple[int, int], mode: str) -> tuple[int, int]:
    """(height, width) the image of shape ``source`` takes on the model grid (:func:`fit`)."""
    if mode == "stretch":
        return grid
    h, w = source
    scale = min(grid[0] / h, grid[1] / w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def fit(
    image: FloatImage,
    grid: tuple[int, int],
    mode: str,
    pil: Image.Image | None = None,
    source: tuple[int, int] | None = None,
) -> tuple[FloatImage, Geometry]:
    """Place `image` (HxW, [0,1]) on the model grid; returns the grid image and its geometry.
    ``pil``: ``as_pil(image)`` when the caller has it (see :func:`resize`). ``source``: the source grid
    when ``image`` is a reduced-resolution decode of it (the geometry, hence the box, is the source's)."""
    h, w = source or image.shape
    gh, gw = grid
    if mode == "stretch":
        return resize(image, grid, pil), Geometry((h, w), grid, (0, 0, gh, gw))
    ch, cw = content_shape((h, w), grid, mode)
    top, left = (gh - ch) // 2, (gw - cw) // 2
    out = np.zeros(grid, np.float32)
    out[top : top + ch, left : left + cw] = resize(image, (ch, cw), pil)
    return out, Geometry((h, w), grid, (top, left, ch, cw))


def normalise(grid_image: FloatImage, spec: ModelSpec) -> NDArray[np.float32]:
    """(H, W) in [0,1] → (C, H, W) float32 normalised as the card says (channels repeated)."""
    x = grid_image
    norm = spec.normalization
    channels = []
    for c in range(spec.channels):
        if norm.kind == "meanstd":
            mean = norm.mean[c % len(norm.mean)] if norm.mean else 0.0
            std = norm.std[c % len(norm.std)] if norm.std else 1.0
            channels.append((x - np.float32(mean)) / np.float32(std))
        else:  # minmax: stretch the image's own range to [0, 1]
            lo, hi = float(x.min()), float(x.max())
            channels.append((x - lo) / (hi - lo) if hi > lo else np.zeros_like(x))
    return np.stack(channels).astype(np.float32)


def content(grid_map: FloatImage, geometry: Geometry) -> FloatImage:
    """The part of a map on the model grid (any resolution proportional to it) that covers the image:
    the letterbox padding cropped off. Its aspect ratio is the source's, at the map's resolution."""
    gh, gw = geometry.grid
    mh, mw = grid_map.shape
    sy, sx = mh / gh, mw / gw
    top, left, ch, cw = geometry.box
    y0, x0 = round(top * sy), round(left * sx)
    y1, x1 = max(y0 + 1, round((top + ch) * sy)), max(x0 + 1, round((left + cw) * sx))
    return np.ascontiguousarray(grid_map[y0:y1, x0:x1])


def to_source(grid_map: FloatImage, geometry: Geometry) -> FloatImage:
    """A map on the model grid (any resolution proportional to it) back on the source pixel grid."""
    return resize(content(grid_map, geometry), geometry.src_shape)
