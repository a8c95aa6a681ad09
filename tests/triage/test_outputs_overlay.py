"""Overlay rendering: outline colour, heat map colour, size cap, caption strip; mask PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from triage.outputs.atomic import atomic_save_png
from triage.outputs.overlay import (
    OUTLINE_RGB,
    inferno,
    outline,
    output_size,
    overlay_base,
    render_overlay,
    save_mask_png,
)

H, W = 300, 260


def image() -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    return (0.3 + 0.4 * xx / (W - 1)).astype(np.float32) + 0.0 * yy


def disk_mask() -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    return np.asarray((yy - 100) ** 2 + (xx - 80) ** 2 < 40**2)


def saliency_low_res() -> np.ndarray:
    """32x32 saliency: 1 in the top-right quarter, 0 elsewhere."""
    s = np.zeros((32, 32), np.float32)
    s[:16, 16:] = 1.0
    return s


def test_outline_pixels_have_the_outline_colour() -> None:
    mask = disk_mask()
    out = render_overlay(image(), mask, None, caption="test")
    assert out.dtype == np.uint8 and out.shape[1:] == (W, 3) and out.shape[0] > H
    ring = outline(mask)
    assert ring.sum() > 0 and not ring[100, 80]  # a ring, not the filled disk
    assert (out[:H][ring] == OUTLINE_RGB).all()
    inside = mask & ~ring
    assert not (out[:H][inside] == OUTLINE_RGB).all(axis=1).any()
    # 2 px thick: the pixel 2 px inside the left edge of the disk is not outline, 1 px inside is.
    left = int(np.argmax(mask[100]))
    assert ring[100, left] and ring[100, left + 1] and not ring[100, left + 2]


def test_saliency_high_region_is_coloured_and_low_region_untouched() -> None:
    img = image()
    out = render_overlay(img, None, saliency_low_res(), alpha=0.5)
    grey = np.rint(img * 255).astype(int)
    hot = out[20:120, 160:250].astype(int)
    cold = out[200:280, 20:100].astype(int)
    # hot: pale-yellow inferno end blended in, red clearly above blue
    assert (hot[..., 0] - hot[..., 2]).mean() > 30
    np.testing.assert_allclose(cold, np.repeat(grey[200:280, 20:100, None], 3, axis=2), atol=1)
    assert tuple(inferno(np.array([1.0]))[0]) == (252, 255, 164)
    assert tuple(inferno(np.array([0.0]))[0]) == (0, 0, 4)


@pytest.mark.parametrize(
    ("shape", "max_side"), [((3000, 2500), 1024), ((800, 2000), 512), ((4000, 300), 256)]
)
def test_output_size_is_capped(shape: tuple[int, int], max_side: int) -> None:
    img = np.zeros(shape, np.float32)
    mask = np.zeros(shape, bool)
    mask[shape[0] // 3 : shape[0] // 2, 100:200] = True
    out = render_overlay(img, mask, saliency_low_res(), max_side=max_side, caption="P(PTX)=0.93 · positive")
    assert max(out.shape[:2]) <= max_side
    h, w = output_size(shape, max_side)
    assert out.shape[1] == w and abs(w - h * shape[1] / shape[0]) <= 1.0  # aspect kept to a pixel
    assert (out[:h] == OUTLINE_RGB).all(axis=2).any()  # the mask is still outlined after shrinking


def test_small_image_is_not_enlarged_and_tiny_mask_survives_shrinking() -> None:
    assert output_size((100, 120), 1024) == (100, 120)
    img = np.full((2048, 2048), 0.5, np.float32)
    mask = np.zeros((2048, 2048), bool)
    mask[1000:1003, 1000:1003] = True  # 3 px: less than one output pixel at 1/4 scale
    out = render_overlay(img, mask, None, max_side=512)
    assert (out == OUTLINE_RGB).all(axis=2).any()


@pytest.mark.parametrize("shape", [(2048, 1776), (1100, 2300), (300, 260)])
def test_an_overlay_drawn_from_its_shrunk_base_is_the_overlay_of_the_source(shape: tuple[int, int]) -> None:
    """The pipeline keeps only `overlay_base(image)` (4 MB instead of 16 at 2048²) and draws from it with
    the source grid in `shape`: the pixels must be those drawn from the full image."""
    rng = np.random.default_rng(3)
    source = rng.random(shape, dtype=np.float32)
    mask = np.zeros(shape, bool)
    mask[shape[0] // 3 : shape[0] // 2, shape[1] // 4 : shape[1] // 2] = True
    mask[5, 7] = True  # one stray pixel, kept visible by the shrinking rule
    base = overlay_base(source)
    assert base.shape == output_size(shape, 1024) and base.nbytes <= source.nbytes
    for m in (mask, None):
        full = render_overlay(source, m, saliency_low_res(), caption="P=0.9")
        lean = render_overlay(base, m, saliency_low_res(), caption="P=0.9", shape=shape)
        assert np.array_equal(full, lean)
    with pytest.raises(ValueError, match="source grid"):
        render_overlay(base, mask, None, shape=(shape[0] + 1, shape[1]))


def test_bad_inputs_name_the_problem() -> None:
    with pytest.raises(ValueError, match=r"image values span .*1\.5"):
        render_overlay(np.full((10, 10), 1.5, np.float32), None, None)
    with pytest.raises(ValueError, match=r"mask must be bool .*\(10, 10\)"):
        render_overlay(np.zeros((10, 10), np.float32), np.zeros((5, 5), bool), None)
    with pytest.raises(ValueError, match="saliency"):
        render_overlay(np.zeros((10, 10), np.float32), None, np.full((3, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match="max_side=10"):
        render_overlay(np.zeros((10, 10), np.float32), None, None, max_side=10)


def test_save_mask_png(tmp_path: Path) -> None:
    path = tmp_path / "m" / "mask.png"
    save_mask_png(path, disk_mask())
    loaded = np.asarray(Image.open(path))
    assert loaded.dtype == np.uint8 and set(np.unique(loaded)) == {0, 255}
    np.testing.assert_array_equal(loaded == 255, disk_mask())


def test_synthetic_positive_overlay_for_visual_check() -> None:
    """Renders a synthetic positive to /tmp/overlay_check.png (look at it when changing the overlay)."""
    from triage.synth.anatomy import Habitus
    from triage.synth.case import sample_case
    from triage.synth.config import PhantomConfig
    from triage.synth.render import render

    rng = np.random.default_rng(3)
    rendered = render(sample_case(PhantomConfig(), Habitus.sample(rng), True, rng), 512)
    mask = rendered.pneumothorax
    yy, xx = np.nonzero(mask)
    sy, sx = np.mgrid[0:64, 0:64].astype(np.float32) * (512 / 64)
    saliency = np.exp(-((sy - yy.mean()) ** 2 + (sx - xx.mean()) ** 2) / (2 * 40.0**2)).astype(np.float32)
    area = mask.sum() * 0.7**2
    caption = f"P(PTX)=0.93 · positive · area {area:.0f} mm² · bundle ptx-demo 1.0"
    out = render_overlay(np.clip(rendered.image, 0, 1), mask, saliency, caption=caption)
    assert (out[:512][outline(mask)] == OUTLINE_RGB).all()
    atomic_save_png(Path("/tmp/overlay_check.png"), out)
