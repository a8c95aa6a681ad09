"""The model factory: the CAM is the closed form of the head, specs round-trip, bad names are
one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from training.models import ArchSpec, CamClassifier, Segmenter, build_model, load_init_weights
from training.run_format import RunCard, read_run_card, write_run_card

TINY_CLS = ArchSpec("classifier", "resnet10t")
TINY_SEG = ArchSpec(
    "segmenter", "tu-resnet10t", options={"encoder_depth": 3, "decoder_channels": [32, 16, 8]}
)


def test_spatial_mean_of_the_cam_is_the_logit() -> None:
    torch.manual_seed(0)
    model = build_model(TINY_CLS)
    assert isinstance(model, CamClassifier)
    model.eval()
    x = torch.randn(3, 1, 64, 64)
    logit, cam = model.forward_with_cam(x)
    assert logit.shape == (3, 1) and cam.shape == (3, 1, 2, 2)
    torch.testing.assert_close(cam.mean(dim=(2, 3)), logit, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model(x), logit)


def test_segmenter_keeps_the_input_size() -> None:
    model = build_model(TINY_SEG)
    assert isinstance(model, Segmenter)
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 1, 64, 64)


def test_bad_names_list_where_to_look() -> None:
    with pytest.raises(ValueError, match="unknown timm model 'resnet9000'"):
        build_model(ArchSpec("classifier", "resnet9000"))
    with pytest.raises(ValueError, match="unknown smp architecture 'Unet3'"):
        build_model(ArchSpec("segmenter", "resnet18", decoder="Unet3"))
    with pytest.raises(ValueError, match="arch kind"):
        ArchSpec.from_dict({"kind": "detector", "backbone": "x"})


def test_run_card_round_trips(tmp_path: Path) -> None:
    card = RunCard(role="segmenter", arch=TINY_SEG, input_size=(64, 64), thresholds={"top": 0.7})
    write_run_card(tmp_path, card)
    assert read_run_card(tmp_path) == card
    with pytest.raises(ValueError, match="not a training run folder"):
        read_run_card(tmp_path / "nothing")


def test_init_weights_load_from_a_local_file_with_or_without_prefix(tmp_path: Path) -> None:
    source = build_model(TINY_CLS)
    assert isinstance(source, CamClassifier)
    weights = {k: v.contiguous() for k, v in source.backbone.state_dict().items()}
    save_file(weights, str(tmp_path / "w.safetensors"))
    target = build_model(TINY_CLS)
    missing = load_init_weights(target, tmp_path / "w.safetensors")
    assert missing == ["head.weight", "head.bias"]
    for key, value in source.backbone.state_dict().items():
        torch.testing.assert_close(target.state_dict()[f"backbone.{key}"], value)
    torch.save({"nothing": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="no tensor matches"):
        load_init_weights(target, tmp_path / "other.pt")
