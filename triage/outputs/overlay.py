"""Human-readable overlay PNG: saliency heat map + mask outline on the radiograph, with a caption strip.

Colours: the saliency uses *inferno* (perceptually uniform, black → purple → orange → pale yellow; a
10-entry lookup table from matplotlib, interpolated linearly, no matplotlib import), blended with an
opacity that ramps up with the saliency so that low values leave the radiograph untouched. The mask
outline is cyan, 2 px, drawn last; inferno has no cyan, so outline and heat map never look alike.
"""

from __future__ import annotations

import functools
import logging
import unicodedata
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from triage.outputs.atomic import atomic_save_png

logger = logging.getLogger(__name__)

# matplotlib's inferno sampled at 10 evenly spaced points (viridisLite::inferno(10)), RGB 0..255.
INFERNO_ANCHORS = np.array(
    [
        (0, 0, 4),
        (27, 12, 66),
        (75, 12, 107),
        (120, 28, 109),
        (165, 44, 96),
        (207, 68, 70),
        (237, 105, 37),
        (251, 154, 6),
        (247, 208, 60),
        (252, 255, 164),
    ],
    dtype=np.float32,
)
OUTLINE_RGB = (0, 255, 255)  # cyan
OUTLINE_PX = 2
SALIENCY_RAMP = (0.25, 0.75)  # blend weight goes 0 → alpha as the saliency goes from lo to hi
STRIP_BG = (24, 24, 24)
TEXT_RGB = (240, 240, 240)
MIN_MAX_SIDE = 64
OVERLAY_MAX_SIDE = 1024  # the overlay PNG / SC fits in this many pixels, caption strip included
# Stand-ins for characters Pillow's built-in font lacks (checked per font; anything else missing → "?").
_FALLBACK = {"→": "->", "≥": ">=", "≤": "<=", "×": "x", "–": "-", "—": "-", "µ": "u", "²": "2", "³": "3"}


def _inferno_exact(values: np.ndarray) -> np.ndarray:
    """uint8 (..., 3) RGB: linear interpolation between the anchors (used to build the lookup table)."""
    t = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float32)), 0.0, 1.0) * (len(INFERNO_ANCHORS) - 1)
    lo = np.minimum(np.floor(t).astype(np.intp), len(INFERNO_ANCHORS) - 2)
    frac = (t - lo)[..., None]
    rgb = INFERNO_ANCHORS[lo] * (1.0 - frac) + INFERNO_ANCHORS[lo + 1] * frac
    out: np.ndarray = np.rint(rgb).astype(np.uint8)
    return out


_INFERNO_LUT = _inferno_exact(np.linspace(0.0, 1.0, 1024, dtype=np.float32))
_INFERNO_PALETTE = _inferno_exact(np.linspace(0.0, 1.0, 256, dtype=np.float32)).reshape(-1).tolist()


def _to_u8(values: np.ndarray) -> np.ndarray:
    """float [0, 1] → uint8 0..255, rounded."""
    out: np.ndarray = np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
    return out


def inferno(values: np.ndarray) -> np.ndarray:
    """uint8 (..., 3) RGB of ``values`` (float, any shape, clipped to [0, 1]) on the inferno colormap
    (a 1024-entry lookup table: within 1 grey level of the exact interpolation, ~10x faster)."""
    t = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float32)), 0.0, 1.0)
    out: np.ndarray = _INFERNO_LUT[np.rint(t * (len(_INFERNO_LUT) - 1)).astype(np.intp)]
    return out


def _check_unit_float(name: str, arr: np.ndarray) -> np.ndarray:
    """``arr`` as float32 after checking it is 2-D, non-empty and within [0, 1] (no NaN)."""
    a = np.asarray(arr)
    if a.ndim != 2 or min(a.shape) < 1 or not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{name} must be a float HxW array with sides >= 1; got {a.dtype} {a.shape}")
    lo, hi = float(np.min(a)), float(np.max(a))
    if not (lo >= 0.0 and hi <= 1.0):  # also catches NaN
        raise ValueError(f"{name} values span {lo}..{hi}; valid range is [0, 1]")
    return a.astype(np.float32, copy=False)


def _resize(
    arr: np.ndarray, size: tuple[int, int], *, smooth_up: bool, pil: Image.Image | None = None
) -> np.ndarray:
    """float32 ``arr`` resized to ``size`` = (height, width): box filter when shrinking, else bilinear.
    ``pil``: ``arr`` as a PIL "F" image if the caller has made it already (same result)."""
    h, w = size
    if arr.shape == (h, w):
        return arr
    shrink = h <= arr.shape[0] and w <= arr.shape[1] and not smooth_up
    method = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    if pil is None:
        pil = Image.fromarray(np.ascontiguousarray(arr, dtype=np.float32), mode="F")
    return np.asarray(pil.resize((w, h), method), dtype=np.float32)


def outline(mask: np.ndarray, width: int = OUTLINE_PX) -> np.ndarray:
    """bool HxW: the inner ``width``-px border of ``mask`` (bool HxW); the image edge counts as outside."""
    inner = ndimage.binary_erosion(mask, structure=np.ones((3, 3), bool), iterations=width, border_value=0)
    out: np.ndarray = mask & ~inner
    return out


Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@functools.cache
def _font(size: int) -> Font:
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError):  # Pillow without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def _drawable(text: str, font: Font) -> str:
    """``text`` with characters that ``font`` has no glyph for replaced (mm² → mm2, → → ->, é → e)."""
    missing = font.getmask("\ue000")  # a private-use code point: the font's "no glyph" box
    tofu = (missing.size, bytes(missing))
    out = []
    for ch in text:
        mask = font.getmask(ch)
        if ch.isascii() or (mask.size, bytes(mask)) != tofu:
            out.append(ch)
            continue
        plain = unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode()
        out.append(_FALLBACK.get(ch) or plain or "?")
    return "".join(out)


def _font_size(width: int) -> int:
    return int(np.clip(round(width / 40), 10, 24))


def _strip_height(width: int) -> int:
    """Height (px) of the caption strip under an overlay ``width`` px wide: two text lines + padding."""
    return round(_font_size(width) * 2.9) + 6


def _fit(draw: ImageDraw.ImageDraw, text: str, size: int, room: float) -> tuple[str, Font]:
    """(text, font): the largest font ≥ 9 px in which ``text`` fits ``room`` px, else truncated with …."""
    text = _drawable(text, _font(size))
    for s in range(size, 9, -1):
        font = _font(s)
        if draw.textlength(text, font=font) <= room:
            return text, font
    font = _font(9)
    if draw.textlength(text, font=font) <= room:
        return text, font
    while text and draw.textlength(text + "…", font=font) > room:
        text = text[:-1]
    return text + "…", font


def _draw_strip(width: int, caption: str, *, with_mask: bool, with_saliency: bool) -> np.ndarray:
    """uint8 (strip height, width, 3): caption on line 1, colour legend on line 2."""
    height, size = _strip_height(width), _font_size(width)
    strip = Image.new("RGB", (width, height), STRIP_BG)
    draw = ImageDraw.Draw(strip)
    pad = max(3, size // 3)
    text, font = _fit(draw, caption, size, width - 2 * pad)
    draw.text((pad, pad), text, fill=TEXT_RGB, font=font)
    y, x, swatch = pad + int(size * 1.45), pad, max(8, size)
    legend_font = _font(max(9, size - 2))
    if with_mask:
        draw.rectangle((x, y + 2, x + swatch, y + swatch - 2), outline=OUTLINE_RGB, width=2)
        x += swatch + pad
        draw.text((x, y), "mask", fill=TEXT_RGB, font=legend_font)
        x += int(draw.textlength("mask", font=legend_font)) + 3 * pad
    if with_saliency:
        bar_w = max(20, min(4 * swatch, width // 5))
        if x + bar_w < width - pad:
            bar = inferno(np.linspace(0.0, 1.0, bar_w, dtype=np.float32))
            strip.paste(Image.fromarray(np.repeat(bar[None], max(4, swatch - 4), axis=0)), (x, y + 2))
            x += bar_w + pad
            label = _drawable("saliency low → high", legend_font)
            draw.text((x, y), label, fill=TEXT_RGB, font=legend_font)
    return np.asarray(strip, dtype=np.uint8)


def output_size(shape: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(height, width) of the image part so that image + caption strip fit in ``max_side`` x ``max_side``."""
    h, w = shape
    scale = min(1.0, max_side / max(h, w))
    oh, ow = max(1, round(h * scale)), max(1, round(w * scale))
    if oh + _strip_height(ow) > max_side:
        scale = min(scale, (max_side - _strip_height(ow)) / h)
        oh, ow = max(1, int(h * scale)), max(1, int(w * scale))
    return oh, ow


def overlay_base(
    image: np.ndarray,
    max_side: int = OVERLAY_MAX_SIDE,
    pil: Image.Image | None = None,
    shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """``image`` (float HxW in [0, 1]) shrunk to the size :func:`render_overlay` draws it at (box filter,
    as the overlay does): all of the picture an overlay needs. Holding this instead of the source grid
    keeps 4 MB per 2048² image in flight instead of 16 MB; ``render_overlay(base, ..., shape=(H, W))``
    then draws exactly what ``render_overlay(image, ...)`` would. ``pil``: ``image`` as a PIL "F" image
    if the caller has it (the readers make one for all their resizes). ``shape``: the source grid when
    ``image`` is a reduced-resolution decode of it (the overlay's size is the source's)."""
    img = _check_unit_float("image", image)
    size = output_size(shape or (int(img.shape[0]), int(img.shape[1])), max_side)
    return _resize(img, size, smooth_up=False, pil=pil)


def render_overlay(
    image: np.ndarray,
    mask: np.ndarray | None,
    saliency: np.ndarray | None,
    *,
    max_side: int = OVERLAY_MAX_SIDE,
    alpha: float = 0.45,
    caption: str = "",
    shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """uint8 (H' + strip, W', 3) RGB overlay of ``image`` with heat map, mask outline and caption.

    image: float HxW in [0, 1], display orientation (1 = bright). mask: bool HxW or None. saliency:
    float hxw in [0, 1] at any resolution (bilinearly resized to the image) or None. shape: the source
    pixel grid (H, W) when ``image`` is a smaller copy of it (:func:`overlay_base`); the overlay's size and
    the mask's shape follow ``shape`` (default: ``image.shape``). The result, caption strip included, fits
    in ``max_side`` x ``max_side`` px (aspect kept, never enlarged); the heat map is blended with opacity up
    to ``alpha`` where the saliency is high; the outline is 2 px cyan on top.
    Raises ValueError naming a bad shape, dtype or value range.
    """
    img = _check_unit_float("image", image)
    if max_side < MIN_MAX_SIDE:
        raise ValueError(f"max_side={max_side!r} must be >= {MIN_MAX_SIDE}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha!r} must be in [0, 1]")
    grid = (int(shape[0]), int(shape[1])) if shape is not None else (int(img.shape[0]), int(img.shape[1]))
    if min(grid) < 1:
        raise ValueError(f"shape={grid!r}: the source grid must be at least 1 x 1")
    if mask is not None and (np.asarray(mask).dtype != np.bool_ or np.shape(mask) != grid):
        raise ValueError(
            f"mask must be bool with the source grid's shape {grid}; got {np.asarray(mask).dtype} "
            f"{np.shape(mask)}"
        )
    size = output_size(grid, max_side)
    grey = _to_u8(_resize(img, size, smooth_up=False))
    base = Image.fromarray(grey, mode="L").convert("RGB")
    if saliency is not None:
        sal = np.clip(_resize(_check_unit_float("saliency", saliency), size, smooth_up=True), 0.0, 1.0)
        heat = Image.fromarray(_to_u8(sal), mode="P")
        heat.putpalette(_INFERNO_PALETTE)
        lo, hi = SALIENCY_RAMP
        weight = _to_u8(alpha * np.clip((sal - lo) / (hi - lo), 0.0, 1.0))
        # out = heat·w + grey·(1 − w), w in 1/255 steps; where w = 0 the radiograph is untouched
        base = Image.composite(heat.convert("RGB"), base, Image.fromarray(weight, mode="L"))
    out = np.array(base, dtype=np.uint8)
    if mask is not None and mask.any():
        coverage = Image.fromarray(np.asarray(mask, dtype=np.uint8) * np.uint8(255), mode="L")
        if coverage.size != (size[1], size[0]):
            coverage = coverage.resize((size[1], size[0]), Image.Resampling.BOX)
        cover = np.asarray(coverage)
        small = cover >= 128
        if not small.any():  # a tiny mask must not vanish when the image is shrunk
            small = cover > 0
        out[outline(small)] = OUTLINE_RGB
    strip = _draw_strip(size[1], caption, with_mask=mask is not None, with_saliency=saliency is not None)
    result: np.ndarray = np.concatenate([out, strip], axis=0)
    return result


def save_mask_png(path: Path, mask: np.ndarray) -> None:
    """Save ``mask`` (bool HxW) as an 8-bit greyscale PNG (0 = background, 255 = mask) atomically."""
    arr = np.asarray(mask)
    if arr.dtype != np.bool_ or arr.ndim != 2:
        raise ValueError(f"mask must be bool HxW; got {arr.dtype} with shape {arr.shape}")
    atomic_save_png(path, arr.astype(np.uint8) * np.uint8(255))
