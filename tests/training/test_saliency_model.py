"""The saliency U-Net: its head's CAM, the export wrapper, map losses, the mixed objective and targets."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from training.models import ArchSpec, SaliencyForExport, SaliencyNet, build_model
from training.run_format import RunCard, read_run_card, write_run_card
from training.saliency.losses import map_loss, map_loss_per_image, mixed_objective
from training.saliency.targets import TargetError, gaze_heatmap, lesion_heatmap, read_gaze_csv
from triage.cascade.preprocess import Geometry

TINY_SAL = ArchSpec("saliency", "tu-resnet10t", options={"encoder_depth": 3, "decoder_channels": [32, 16, 8]})


def tiny() -> SaliencyNet:
    torch.manual_seed(0)
    model = build_model(TINY_SAL)
    assert isinstance(model, SaliencyNet)
    return model.eval()


def test_outputs_and_the_heads_cam() -> None:
    model = tiny()
    x = torch.randn(2, 1, 64, 64)
    maps, logit, cam = model.forward_all(x)
    assert maps.shape == (2, 1, 64, 64) and logit.shape == (2, 1) and cam.shape == (2, 1, 8, 8)
    torch.testing.assert_close(cam.mean(dim=(2, 3)), logit, rtol=1e-5, atol=1e-5)
    plain_maps, plain_logit = model(x)
    torch.testing.assert_close(plain_maps, maps)
    torch.testing.assert_close(plain_logit, logit)


@pytest.mark.parametrize("activation", ["sigmoid", "spatial_softmax"])
def test_export_wrapper_gives_maps_in_unit_range(activation: str) -> None:
    wrapped = SaliencyForExport(tiny(), activation)  # type: ignore[arg-type]
    with torch.no_grad():
        maps, logit = wrapped(torch.randn(2, 1, 64, 64))
    assert maps.shape == (2, 1, 64, 64) and logit.shape == (2, 1)
    assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0
    if activation == "spatial_softmax":
        torch.testing.assert_close(maps.flatten(1).amax(1), torch.ones(2))
    with pytest.raises(ValueError, match="map_activation must be one of"):
        SaliencyForExport(tiny(), "relu")  # type: ignore[arg-type]


def test_run_card_with_the_saliency_kind_round_trips(tmp_path: Path) -> None:
    card = RunCard(role="saliency", arch=TINY_SAL, input_size=(64, 64))
    write_run_card(tmp_path, card)
    assert read_run_card(tmp_path) == card


def test_map_losses_on_known_values() -> None:
    target = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    logits = torch.zeros(1, 1, 2, 2)
    bce, _ = map_loss_per_image(logits, target, "bce")
    assert float(bce[0]) == pytest.approx(math.log(2))  # BCE at p = 0.5 is log 2 whatever the target
    mse, _ = map_loss_per_image(logits, target, "mse")
    assert float(mse[0]) == pytest.approx(0.25)
    kl, usable = map_loss_per_image(logits, target, "kl")
    # T̂ = (1/2, 0, 0, 1/2), Q uniform: KL = log 2
    assert float(kl[0]) == pytest.approx(math.log(2), rel=1e-5) and bool(usable[0])
    perfect = torch.log(torch.tensor([[[[1.0, 1e-9], [1e-9, 1.0]]]]))
    assert float(map_loss_per_image(perfect, target, "kl")[0][0]) == pytest.approx(0.0, abs=1e-6)
    # an all-zero target is skipped by KL, used by BCE
    _, usable = map_loss_per_image(logits, torch.zeros(1, 1, 2, 2), "kl")
    assert not bool(usable[0])
    assert float(map_loss(logits, torch.zeros(1, 1, 2, 2), "kl")) == 0.0
    # a target on a finer grid is area-averaged onto the map's grid
    fine = target.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)
    torch.testing.assert_close(map_loss_per_image(logits, fine, "mse")[0], mse)


def test_mixed_objective_weights_its_parts() -> None:
    torch.manual_seed(0)
    maps, logit, cam = torch.randn(3, 1, 8, 8), torch.randn(3, 1), torch.randn(3, 1, 2, 2)
    target, label = torch.rand(3, 1, 8, 8), torch.tensor([1.0, 0.0, 1.0])
    total, logs = mixed_objective(maps, logit, cam, target, label, kind="kl", alpha=0.25, cls_weight=0.4)
    expected = 0.4 * logs["cls_loss"] + 0.6 * (0.25 * logs["decoder_loss"] + 0.75 * logs["cam_loss"])
    assert float(total) == pytest.approx(expected, rel=1e-6)
    only_decoder, logs1 = mixed_objective(maps, logit, cam, target, label, alpha=1.0, cls_weight=0.0)
    assert logs1["cam_loss"] == 0.0 and float(only_decoder) == pytest.approx(logs1["decoder_loss"])
    with pytest.raises(ValueError, match=r"--alpha must be in \[0, 1\], got 1.5"):
        mixed_objective(maps, logit, cam, target, label, alpha=1.5)


def test_gaze_csv_is_read_and_validated(tmp_path: Path) -> None:
    sizes = {"a": (100, 200), "b": (100, 100)}
    good = tmp_path / "gaze.csv"
    good.write_text("image_id,x,y,weight\na,10,20,0.5\na,199.5,99,1\nb,50,50,\n", encoding="utf-8")
    fix = read_gaze_csv(good, sizes)
    assert [(f.x, f.y, f.weight) for f in fix["a"]] == [(10, 20, 0.5), (199.5, 99, 1.0)]
    assert fix["b"][0].weight == 1.0
    cases = {
        "image_id,x,y\na,200,20\n": r"line 2: fixation \(x=200, y=20\) of a lies outside its 200x100 image",
        "image_id,x,y\na,5,-1\n": "lies outside",
        "image_id,x,y\nzz,5,5\n": r"line 2: image_id 'zz' is not in the data set",
        "image_id,x\na,5\n": r"missing column\(s\) \['y'\]",
        "image_id,x,y\na,five,5\n": "must be numbers",
        "image_id,x,y,weight\na,5,5,0\n": "weight > 0",
    }
    for text, pattern in cases.items():
        bad = tmp_path / "bad.csv"
        bad.write_text(text, encoding="utf-8")
        with pytest.raises(TargetError, match=pattern) as info:
            read_gaze_csv(bad, sizes)
        assert "\n" not in str(info.value)


def test_gaze_and_lesion_heatmaps_land_on_the_grid() -> None:
    # a 200 (h) x 100 (w) image letterboxed onto 64x64: content box 64 high, 32 wide, 16 px left padding
    geometry = Geometry((200, 100), (64, 64), (0, 16, 64, 32))
    from training.saliency.targets import Fixation

    heat = gaze_heatmap([Fixation(49.5, 99.5)], geometry, sigma_px=10.0)
    assert heat.shape == (64, 64) and heat.max() == pytest.approx(1.0, abs=0.02)
    y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    assert abs(y - 31.5) <= 0.5 and abs(x - 31.5) <= 0.5  # the image centre
    mask = np.zeros((64, 64), bool)
    mask[10:14, 20:24] = True
    lesion = lesion_heatmap(mask, geometry, sigma_px=6.0)
    assert lesion.max() == pytest.approx(1.0) and lesion[12, 22] == pytest.approx(1.0, abs=0.05)
    assert lesion[50, 50] < 1e-3
    assert not lesion_heatmap(np.zeros((64, 64), bool), geometry, 6.0).any()
