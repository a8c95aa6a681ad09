"""Cascade building blocks: geometry round trips, TTA, triplet thresholds, CAM closed form."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.bundles import build_tiny_bundle
from triage.bundle import Thresholds, load_bundle
from triage.cascade import tta
from triage.cascade.items import pixels_to_keep
from triage.cascade.models import CascadeModels, normalised_cam
from triage.cascade.postprocess import decide, triplet_mask
from triage.cascade.preprocess import as_pil, fit, to_source
from triage.outputs.formats import format_option, parse_formats


def test_letterbox_keeps_aspect_and_maps_back_to_the_source_grid() -> None:
    image = np.zeros((300, 200), np.float32)
    image[100:200, 50:150] = 1.0  # a square in a portrait image
    grid, geom = fit(image, (64, 64), "letterbox")
    assert geom.box[2] == 64 and geom.box[3] == 43  # 300x200 scaled by 64/300
    assert grid[:, : geom.box[1]].max() == 0.0  # padding left of the content
    back = to_source(grid, geom) > 0.5
    assert back.shape == (300, 200)
    assert abs(int(back.sum()) - 100 * 100) < 0.08 * 100 * 100
    assert back[150, 100] and not back[50, 100]


@pytest.mark.parametrize("mode", ["letterbox", "stretch"])
def test_one_pil_copy_shared_by_all_resizes_gives_the_same_model_inputs(mode: str) -> None:
    """The readers make the PIL copy of a source image once for the classifier's, the segmenter's and
    the overlay's resize: each grid must equal the one made from the array alone."""
    image = np.random.default_rng(0).random((1500, 1234), dtype=np.float32)
    pil = as_pil(image)
    for grid in ((224, 224), (256, 256), (97, 301)):
        shared, geom_shared = fit(image, grid, mode, pil)
        alone, geom_alone = fit(image, grid, mode)
        assert geom_shared == geom_alone
        np.testing.assert_array_equal(shared, alone)


def test_stretch_maps_back() -> None:
    image = np.zeros((120, 80), np.float32)
    image[:60] = 1.0
    grid, geom = fit(image, (32, 32), "stretch")
    assert grid[:15].min() > 0.9 and grid[17:].max() < 0.1
    np.testing.assert_array_equal(to_source(grid, geom) > 0.5, image > 0.5)


def test_tta_undoes_flips_before_averaging() -> None:
    x = np.random.default_rng(0).random((2, 1, 4, 6)).astype(np.float32)
    expanded = tta.expand(x, ("none", "hflip", "vflip"))
    assert expanded.shape == (6, 1, 4, 6)
    np.testing.assert_allclose(tta.merge_maps(expanded, 2, ("none", "hflip", "vflip")), x)
    merged = tta.merge_scalars(np.array([1.0, 2.0, 3.0, 4.0]), 2, ("none", "hflip"))
    np.testing.assert_allclose(merged, [2.0, 3.0])


def test_triplet_threshold_by_hand() -> None:
    th = Thresholds(gate=0.5, top=0.75, min_area=4, bottom=0.3, min_component=3)
    p = np.zeros((8, 8), np.float32)
    p[1:3, 1:3] = 0.8  # 4 confident pixels: enough for min_area 4
    p[1:3, 3] = 0.4  # extends the region above `bottom`
    p[6, 6] = 0.5  # an isolated pixel above bottom: removed (component of 1 < 3)
    mask = triplet_mask(p, th)
    assert mask.sum() == 6 and mask[1:3, 1:4].all() and not mask[6, 6]
    p[1, 1] = 0.7  # now only 3 pixels exceed top: empty
    assert not triplet_mask(p, th).any()


def test_cam_output_is_the_closed_form_of_the_head(tmp_path: Path) -> None:
    bundle = load_bundle(build_tiny_bundle(tmp_path / "b"))
    models = CascadeModels(bundle, "cpu", 1)
    x = np.random.default_rng(1).normal(size=(3, 1, 64, 64)).astype(np.float32)
    out = models.classifier(x)
    # global average pooling of the CAM (linear head per position) gives back the logit exactly
    np.testing.assert_allclose(out["cam"].mean(axis=(1, 2, 3)), out["logit"].ravel(), rtol=1e-5, atol=1e-5)
    prob, cam = models.gate(x, use_tta=True)
    assert prob.shape == (3,) and cam is not None and cam.shape == (3, 8, 8)
    norm = normalised_cam(cam)
    peaks = norm.reshape(3, -1).max(axis=1)
    assert norm.min() >= 0 and np.allclose(peaks[peaks > 0], 1)


@pytest.mark.parametrize("use_tta", [False, True])
def test_segmenter_tta_of_a_symmetric_model_changes_nothing(tmp_path: Path, use_tta: bool) -> None:
    models = CascadeModels(load_bundle(build_tiny_bundle(tmp_path / "b")), "cpu", 1)
    x = np.random.default_rng(2).random((2, 1, 64, 64)).astype(np.float32)
    # the box-filter segmenter commutes with flips, so TTA must reproduce the plain output
    np.testing.assert_allclose(models.segment(x, use_tta), models.segment(x, False), atol=1e-5)


def test_decision_positive_only_when_gated_with_a_mask_on_the_source_grid() -> None:
    th = Thresholds(gate=0.5, top=0.75, min_area=4, bottom=0.3, min_component=1)
    source = np.zeros((300, 200), np.float32)
    _, geom = fit(source, (64, 64), "letterbox")
    p = np.zeros((64, 64), np.float32)
    p[20:30, 25:35] = 0.9  # a confident 10x10 region inside the letterboxed content
    hit = decide(0.8, True, p, geom, (300, 200), (0.2, 0.2), th)
    assert hit.positive and hit.gated and hit.mask.shape == (300, 200)
    assert hit.area_px == int(hit.mask.sum()) > 0
    assert hit.area_mm2 == round(hit.area_px * 0.04, 1)
    assert hit.priority == pytest.approx(1.8)  # positives sort above every negative
    gated_empty = decide(0.8, True, np.zeros_like(p), geom, (300, 200), None, th)
    assert gated_empty.gated and not gated_empty.positive and gated_empty.area_px == 0
    assert gated_empty.area_mm2 is None and gated_empty.priority == pytest.approx(0.8)
    not_gated = decide(0.3, False, None, None, (300, 200), (0.2, 0.2), th)
    assert not not_gated.positive and not not_gated.mask.any() and not_gated.area_mm2 == 0.0


def test_output_formats_are_parsed_against_the_one_registry() -> None:
    assert parse_formats(" png, sr ,") == {"png", "sr"}
    assert format_option(parse_formats("sr,png,seg")) == "png,seg,sr"
    with pytest.raises(ValueError, match=r"\['jpeg'\]; valid: png, seg, sc, sr, saliency"):
        parse_formats("png,jpeg")
    assert pixels_to_keep({"seg", "sr"}) == "none" and pixels_to_keep({"sc"}) == "overlay"
