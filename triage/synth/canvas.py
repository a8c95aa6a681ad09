"""Raster canvases for the phantom: PIL draws (fast, in C), numpy adds the layers up.

Normalised point (x, y) maps to pixel coordinates (x·n − 0.5, y·n − 0.5) on an n×n canvas, so that
pixel centres sit at (i + 0.5)/n and canvases of different sizes stay aligned.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw

from triage.synth.geometry import Points

FloatImage = NDArray[np.float32]


class Canvas:
    """A float32 n×n drawing surface; later drawings replace earlier ones where they overlap."""

    def __init__(self, n: int, mode: str = "F") -> None:
        self.n = n
        self.image = Image.new(mode, (n, n), 0)
        self.draw = ImageDraw.Draw(self.image)

    def _px(self, points: Points) -> list[float]:
        p = np.asarray(points, dtype=np.float64) * self.n - 0.5
        flat: list[float] = p.ravel().tolist()
        return flat

    def polygon(self, points: Points, value: float) -> None:
        self.draw.polygon(self._px(points), fill=value)

    def polyline(self, points: Points, width: float, value: float) -> None:
        """A line of normalised `width`; lines thinner than a pixel are drawn 1 px wide and fainter."""
        w_px = width * self.n
        px = max(1, round(w_px))
        v = value * min(1.0, w_px) if w_px < 1 else value
        self.draw.line(self._px(points), fill=v, width=px)

    def disc(self, centre: tuple[float, float], radius: float, value: float) -> None:
        cx, cy = centre[0] * self.n - 0.5, centre[1] * self.n - 0.5
        r = radius * self.n
        self.draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=value)

    def ring(self, centre: tuple[float, float], radius: float, width: float, value: float) -> None:
        cx, cy = centre[0] * self.n - 0.5, centre[1] * self.n - 0.5
        r = radius * self.n
        self.draw.ellipse(
            (cx - r, cy - r, cx + r, cy + r), outline=value, width=max(1, round(width * self.n))
        )

    def array(self) -> FloatImage:
        return np.asarray(self.image, dtype=np.float32)

    def mask(self) -> NDArray[np.bool_]:
        return np.asarray(self.image) > 0


def upsample2(image: FloatImage) -> FloatImage:
    """Exact 2× bilinear upsampling with pixel-centre alignment (edges replicated), in numpy."""
    a = np.asarray(image, dtype=np.float32)
    h, w = a.shape
    rows = np.empty((2 * h, w), np.float32)
    rows[0], rows[-1] = a[0], a[-1]
    d = 0.25 * (a[1:] - a[:-1])
    np.subtract(a[1:], d, out=rows[2::2])
    np.add(a[:-1], d, out=rows[1:-1:2])
    out = np.empty((2 * h, 2 * w), np.float32)
    out[:, 0], out[:, -1] = rows[:, 0], rows[:, -1]
    d = 0.25 * (rows[:, 1:] - rows[:, :-1])
    np.subtract(rows[:, 1:], d, out=out[:, 2::2])
    np.add(rows[:, :-1], d, out=out[:, 1:-1:2])
    return out


def resize(image: FloatImage, n: int) -> FloatImage:
    """Bilinear resize of a square float image to n×n (pixel-centre aligned, as the canvases)."""
    if image.shape[0] == n:
        return image
    if n % image.shape[0] == 0 and (n // image.shape[0]) in (2, 4, 8):
        out_img = image
        while out_img.shape[0] < n:
            out_img = upsample2(out_img)
        return out_img
    out = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32), mode="F").resize(
        (n, n), Image.Resampling.BILINEAR
    )
    return np.array(out, dtype=np.float32)


def polygon_mask(polygons: Points | list[Points], n: int) -> NDArray[np.bool_]:
    """One or several filled polygons as a boolean n×n mask."""
    c = Canvas(n, "L")
    for poly in polygons if isinstance(polygons, list) else [polygons]:
        c.polygon(poly, 1)
    return c.mask()
