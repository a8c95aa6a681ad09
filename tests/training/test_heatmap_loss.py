"""The heatmap loss: its value on hand-made maps, and that it changes the backbone's gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from training.models import ArchSpec, CamClassifier, build_model
from training.saliency.heatmap_loss import (
    HeatmapExplosion,
    HeatmapLoss,
    HeatmapLossConfig,
    irrelevant_term,
    region_on_grid,
    relevant_term,
)


def tiny_model(seed: int = 0) -> CamClassifier:
    torch.manual_seed(seed)
    net = build_model(ArchSpec("classifier", "resnet10t"))
    assert isinstance(net, CamClassifier)
    return net


def batch(n: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    lungs = torch.zeros(n, 1, 64, 64)
    lungs[:, :, 8:56, 4:28] = 1.0
    lungs[:, :, 8:56, 36:60] = 1.0
    mask = torch.zeros(n, 1, 64, 64)
    mask[::2, :, 8:20, 4:20] = 1.0  # every other image positive
    return {
        "image": torch.randn(n, 1, 64, 64, generator=g),
        "label": (mask.flatten(1).amax(1) > 0).float(),
        "lungs": lungs,
        "mask": mask,
    }


def test_terms_on_hand_made_maps() -> None:
    maps = torch.tensor([[[[1.0, 0.0], [0.5, 0.0]]]])
    inside = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    # outside cells hold 0, 0.5 and 0: mean (0.5)/4, sum 0.5, fraction of the mass 0.5/1.5
    assert float(irrelevant_term(maps, inside, "mean")) == pytest.approx(0.125)
    assert float(irrelevant_term(maps, inside, "sum")) == pytest.approx(0.5)
    assert float(irrelevant_term(maps, inside)) == pytest.approx(1 / 3)  # default: the mass fraction
    assert float(relevant_term(maps, inside, "mean")) == pytest.approx(0.0)  # the region holds the peak
    assert float(relevant_term(maps, inside)) == pytest.approx(1 / 3)  # 1 − mass inside (1/1.5)
    inside2 = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    assert float(relevant_term(maps, inside2, "mean")) == pytest.approx(0.5)  # (0 + 1)/2
    assert float(relevant_term(maps, inside2, "sum")) == pytest.approx(1.0)
    # images with an empty region do not count in the relevant term
    both = torch.cat([maps, maps]), torch.cat([inside2, torch.zeros_like(inside2)])
    assert float(relevant_term(*both, "mean")) == pytest.approx(0.5)
    assert float(relevant_term(maps, torch.zeros_like(maps))) == 0.0


def test_region_is_the_inside_fraction_of_each_grid_cell() -> None:
    mask = torch.zeros(1, 1, 8, 8)
    mask[0, 0, :, :2] = 1.0  # the left quarter
    grid = region_on_grid(mask, (2, 2))
    torch.testing.assert_close(grid, torch.tensor([[[[0.5, 0.0], [0.5, 0.0]]]]))
    with pytest.raises(ValueError, match="region masks must be"):
        region_on_grid(torch.zeros(1, 2, 8, 8), (2, 2))


def _backbone_grads(model: CamClassifier, loss: torch.Tensor) -> torch.Tensor:
    params = [p for p in model.backbone.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat(
        [(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params, strict=True)]
    )


@pytest.mark.parametrize("reduction", ["fraction", "sum", "mean"])
@pytest.mark.parametrize("method", ["hirescam", "gradcam"])
def test_the_heatmap_term_changes_the_backbone_gradients(method: str, reduction: str) -> None:
    model = tiny_model()
    b = batch()
    config = HeatmapLossConfig(method=method, weight=1.0, reduction=reduction)  # type: ignore[arg-type]
    loss_fn = HeatmapLoss(config)
    logit = model(b["image"])
    ce = F.binary_cross_entropy_with_logits(logit[:, 0], b["label"])
    term, logs = loss_fn(model, b)
    assert float(term.detach()) > 0 and 0.0 <= logs["heatmap_inside"] <= 1.0
    g_term = _backbone_grads(model, term)
    assert g_term.abs().max() > 0, "the heatmap term must reach the backbone (double backprop)"
    g_ce = _backbone_grads(model, ce)
    g_both = _backbone_grads(model, ce + term)
    assert not torch.equal(g_both, g_ce)
    torch.testing.assert_close(g_both, g_ce + g_term, rtol=1e-4, atol=1e-7)


def test_zero_weight_adds_nothing_and_relevant_lesion_mode_runs() -> None:
    model = tiny_model()
    b = batch()
    term, _ = HeatmapLoss(HeatmapLossConfig(weight=0.0))(model, b)
    assert float(term.detach()) == 0.0
    with torch.no_grad():
        model.head.bias.zero_()  # the predicted class's map then sums to |logit| > 0: not all-dead
    rel, _ = HeatmapLoss(HeatmapLossConfig(mode="relevant", region="lesion"))(model, b)
    assert 0.0 <= float(rel.detach()) <= 1.0 and rel.requires_grad
    assert _backbone_grads(model, rel).abs().max() > 0


def test_features_from_the_training_pass_give_the_same_term() -> None:
    model = tiny_model().eval()
    b = batch()
    loss_fn = HeatmapLoss(HeatmapLossConfig(method="hirescam"))
    own, _ = loss_fn(model, b)
    a = model.features(b["image"])
    shared, _ = loss_fn(model, b, {"features": a, "logit": model.logit_from_features(a)})
    torch.testing.assert_close(own, shared)


def test_bad_settings_and_missing_masks_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match="--heatmap-loss must be one of"):
        HeatmapLossConfig(method="occlusion")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="--heatmap-weight must be a finite number >= 0, got -1"):
        HeatmapLossConfig(weight=-1.0)
    with pytest.raises(ValueError, match="--heatmap-class must be one of"):
        HeatmapLossConfig(which="both")  # type: ignore[arg-type]
    b = batch()
    del b["lungs"]
    with pytest.raises(ValueError, match="needs lungs masks but the batch has no 'lungs' entry"):
        HeatmapLoss(HeatmapLossConfig())(tiny_model(), b)


def test_the_schedule_warms_up_then_ramps_and_counts_training_steps_only() -> None:
    config = HeatmapLossConfig(weight=2.0, warmup_steps=2, ramp_steps=4)
    assert [config.weight_at(s) for s in range(7)] == [0.0, 0.0, 0.5, 1.0, 1.5, 2.0, 2.0]
    loss_fn = HeatmapLoss(config)
    model = tiny_model()
    b = batch()
    model.eval()
    _, logs = loss_fn(model, b)
    assert loss_fn.step == 0 and logs["heatmap_lambda"] == 0.0  # evaluation does not advance λ
    model.train()
    for _ in range(3):
        term, logs = loss_fn(model, b)
    assert loss_fn.step == 3 and logs["heatmap_lambda"] == 0.5
    assert float(term.detach()) == pytest.approx(0.5 * logs["heatmap_term"], rel=1e-5)


def test_a_non_finite_term_is_an_error_naming_step_and_lambda() -> None:
    model = tiny_model()
    b = batch()
    b["image"] = b["image"] * float("nan")
    with pytest.raises(HeatmapExplosion, match=r"heatmap term is nan at step 0 \(λ = 1\)"):
        HeatmapLoss(HeatmapLossConfig())(model, b)


def test_missing_region_masks_are_an_error_or_a_logged_skip() -> None:
    model = tiny_model().eval()  # batch statistics would couple the images
    b = batch()
    b["lungs"][1] = float("nan")  # image 1 has no lung mask
    with pytest.raises(ValueError, match="1 of 4 images in the batch have no lungs mask"):
        HeatmapLoss(HeatmapLossConfig())(model, b)
    skip = HeatmapLoss(HeatmapLossConfig(on_missing="skip", reduction="sum"))
    term, logs = skip(model, b)
    assert logs["heatmap_skipped"] == 1.0 and torch.isfinite(term)
    kept = {k: v[[0, 2, 3]] for k, v in b.items()}
    alone, _ = skip(model, kept)
    torch.testing.assert_close(term, alone, rtol=1e-4, atol=1e-6)  # the skipped image does not count
    flagged = dict(batch(), lungs_valid=torch.tensor([True, False, True, True]))
    with pytest.raises(ValueError, match="1 of 4 images"):
        HeatmapLoss(HeatmapLossConfig())(model, flagged)


def test_a_grid_below_the_minimum_and_an_unknown_layer_are_errors() -> None:
    model = tiny_model()  # 64 px → a 2×2 map on the last layer
    with pytest.raises(ValueError, match=r"attribution grid is 2x2, below the required 8x8"):
        HeatmapLoss(HeatmapLossConfig(min_grid=8))(model, batch())
    term, _ = HeatmapLoss(HeatmapLossConfig(min_grid=8, layer="backbone.layer1"))(model, batch())
    assert torch.isfinite(term)  # an earlier layer: 16×16
    with pytest.raises(ValueError, match=r"unknown layer 'backbone\.layer9'; valid layers"):
        HeatmapLoss(HeatmapLossConfig(layer="backbone.layer9"))(model, batch())
    with pytest.raises(ValueError, match="--heatmap-reduction must be one of"):
        HeatmapLossConfig(reduction="max")  # type: ignore[arg-type]
