"""Reduced-resolution decode (triage/io/reduced.py): JPEG 2000 resolution levels and JPEG DCT scaling give
model inputs, overlays and gate probabilities within the stated tolerance of the full decode, on the
source grid's geometry."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import JPEGBaseline8Bit

from tests.bundles import build_tiny_bundle
from triage.bundle import Bundle, load_bundle
from triage.cascade.items import decode_need, load_item
from triage.cascade.models import CascadeModels
from triage.io.dicom import ReadPolicy, read_image
from triage.io.reduced import _j2k, levels_for
from triage.synth.config import PhantomConfig
from triage.synth.dataset import SynthRequest, synthesize

# the tolerances the module docstring states (model inputs in [0, 1] display units)
INPUT_MEAN, INPUT_MAX, OVERLAY_MEAN, PROBABILITY = 0.01, 0.2, 0.01, 0.02


@pytest.fixture(scope="module")
def j2k_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("j2k")
    synthesize(SynthRequest(root, studies=3, size=1024, seed=5, config=PhantomConfig(compression="j2k")))
    return sorted(root.rglob("*.dcm"))


@pytest.fixture(scope="module")
def j2k_large(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """One 2048² study: the size at which an overlay (≤ 1024 px) can come from a reduced level."""
    root = tmp_path_factory.mktemp("j2k-large")
    synthesize(SynthRequest(root, studies=1, size=2048, seed=6, config=PhantomConfig(compression="j2k")))
    return sorted(root.rglob("*.dcm"))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return load_bundle(build_tiny_bundle(tmp_path_factory.mktemp("bundle"), cls_size=128, seg_size=128))


def test_levels_for_keeps_at_least_the_need() -> None:
    assert levels_for((2048, 2048), (512, 512)) == 2
    assert levels_for((2048, 2048), (513, 512)) == 1
    assert levels_for((2500, 2048), (1024, 839)) == 1  # ceil(2500 / 2) = 1250 ≥ 1024, 1024 ≥ 839
    assert levels_for((1000, 1000), (1000, 1000)) == 0
    assert levels_for((1 << 14, 1 << 14), (1, 1)) == 5  # capped: MAX_LEVELS


def test_level_zero_is_the_stored_values(j2k_files: list[Path]) -> None:
    """Pillow scales 12-bit samples to 16 bits; undone exactly (checked at full resolution)."""
    ds = pydicom.dcmread(j2k_files[0])
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    np.testing.assert_array_equal(_j2k(frame, 0, int(ds.BitsStored)), ds.pixel_array)


def test_reduced_read_keeps_the_source_grid(j2k_files: list[Path]) -> None:
    full = read_image(j2k_files[0])
    reduced = read_image(j2k_files[0], need=lambda shape: (shape[0] // 4, shape[1] // 4))
    assert full.pixels.shape == (1024, 1024) and full.decoder != reduced.decoder
    assert reduced.pixels.shape == (256, 256) and reduced.decoder == "pillow-j2k-reduce2"
    assert (reduced.rows, reduced.columns) == (1024, 1024)
    assert read_image(j2k_files[0], need=lambda shape: shape).pixels.shape == (1024, 1024)  # nothing to gain


@pytest.mark.parametrize("keep", ["none", "overlay"])
def test_cascade_inputs_within_tolerance(
    j2k_files: list[Path], j2k_large: list[Path], bundle: Bundle, keep: str
) -> None:
    models = CascadeModels(bundle, device="cpu", threads=1)
    for path in j2k_large if keep == "overlay" else j2k_files:
        full = load_item(str(path), bundle, ReadPolicy(), keep, reduce=False)  # type: ignore[arg-type]
        fast = load_item(str(path), bundle, ReadPolicy(), keep, reduce=True)  # type: ignore[arg-type]
        assert full.error is None and fast.error is None and fast.image and full.image
        assert fast.image.decoder.startswith("pillow-j2k-reduce") and full.image.decoder == "pylibjpeg"
        assert fast.source_shape == full.source_shape
        for a, b, spec in (
            (full.gate_input, fast.gate_input, bundle.classifier),
            (full.seg_input, fast.seg_input, bundle.segmenter),
        ):
            assert a is not None and b is not None
            assert a.geometry == b.geometry  # masks land on the same source grid
            delta = np.abs(a.x - b.x) * spec.normalization.std[0]  # back to [0, 1] display units
            assert delta.mean() <= INPUT_MEAN and delta.max() <= INPUT_MAX, (delta.mean(), delta.max())
        if keep == "overlay":
            assert full.display is not None and fast.display is not None
            assert full.display.shape == fast.display.shape
            assert np.abs(full.display - fast.display).mean() <= OVERLAY_MEAN
        assert full.gate_input is not None and fast.gate_input is not None
        p_full, _ = models.gate(full.gate_input.x[None], use_tta=True)
        p_fast, _ = models.gate(fast.gate_input.x[None], use_tta=True)
        assert abs(float(p_full[0]) - float(p_fast[0])) <= PROBABILITY


def test_full_keep_decodes_everything(j2k_files: list[Path], bundle: Bundle) -> None:
    assert decode_need(bundle, "full") is None
    item = load_item(str(j2k_files[0]), bundle, ReadPolicy(), "full")
    assert item.image is not None and item.image.pixels.shape == (1024, 1024)


def test_jpeg_baseline_dct_scaling(j2k_files: list[Path], tmp_path: Path) -> None:
    """An 8-bit baseline JPEG of the same radiograph: decoded by libjpeg's DCT scaling within tolerance."""
    ds = pydicom.dcmread(j2k_files[0])
    image = read_image(j2k_files[0]).pixels
    stored = np.rint(image * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(stored, mode="L").save(buffer, format="JPEG", quality=95)
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PhotometricInterpretation, ds.PresentationLUTShape = "MONOCHROME2", "IDENTITY"
    ds.WindowCenter, ds.WindowWidth = 127.5, 256  # a window: the min-max fallback would see the low-pass
    for keyword in ("RescaleSlope", "RescaleIntercept", "RescaleType"):
        if keyword in ds:
            delattr(ds, keyword)
    path = tmp_path / "jpeg.dcm"
    ds.save_as(path, enforce_file_format=True)
    full = read_image(path)
    fast = read_image(path, need=lambda shape: (shape[0] // 4, shape[1] // 4))
    assert fast.decoder == "pillow-jpeg-draft" and fast.pixels.shape == (256, 256)
    small = np.asarray(Image.fromarray(full.pixels, mode="F").resize((256, 256), Image.Resampling.BOX))
    delta = np.abs(small - fast.pixels)
    assert delta.mean() <= INPUT_MEAN and delta.max() <= INPUT_MAX, (delta.mean(), delta.max())
