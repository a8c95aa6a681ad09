"""HiResCAM / Grad-CAM: equal to the closed form for a GAP + linear head, a named layer through hooks,
differentiable (double backprop), and bad layer names are one-line errors listing the valid ones."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from training.models import ArchSpec, CamClassifier, build_model
from training.saliency.attribution import (
    attribute,
    closed_form_map,
    explained_scores,
    layer_names,
    normalise_map,
)


@pytest.fixture(scope="module")
def model() -> CamClassifier:
    torch.manual_seed(0)
    net = build_model(ArchSpec("classifier", "resnet10t"))
    assert isinstance(net, CamClassifier)
    with torch.no_grad():
        net.head.bias.fill_(0.7)  # a non-zero bias, so that the bias handling is tested
    return net.eval()


def images(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 1, 64, 64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method", ["hirescam", "gradcam"])
def test_maps_equal_the_closed_form_of_a_gap_linear_head(model: CamClassifier, method: str) -> None:
    x = images()
    closed = closed_form_map(model, x)
    assert closed.shape == (4, 1, 2, 2)
    att = attribute(model, x, method, which="true", labels=torch.ones(4))  # type: ignore[arg-type]
    torch.testing.assert_close(att.maps, closed, rtol=1e-4, atol=1e-6)
    # the CAM of the export graph: (cam − b)/(h·w), and ReLU + max-normalised maps agree too
    _, cam = model.forward_with_cam(x)
    torch.testing.assert_close(att.maps, (cam - 0.7) / 4, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(normalise_map(att.maps), normalise_map(cam - 0.7), rtol=1e-4, atol=1e-6)


def test_predicted_class_flips_the_sign_for_negative_predictions(model: CamClassifier) -> None:
    x = images(6)
    att = attribute(model, x, "hirescam", which="predicted")
    sign = torch.where(att.logits[:, 0] >= 0, 1.0, -1.0).view(-1, 1, 1, 1)
    torch.testing.assert_close(att.maps, sign * closed_form_map(model, x), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(att.scores, att.logits[:, 0].abs())
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    true = explained_scores(att.logits, "true", labels)
    torch.testing.assert_close(true, torch.where(labels == 1, 1.0, -1.0) * att.logits[:, 0])


def test_a_named_layer_is_captured_with_a_hook(model: CamClassifier) -> None:
    x = images()
    default = attribute(model, x, "hirescam", create_graph=False)
    named = attribute(model, x, "hirescam", layer="backbone.layer4", create_graph=False)
    torch.testing.assert_close(named.maps, default.maps, rtol=1e-4, atol=1e-6)
    early = attribute(model, x, "gradcam", layer="backbone.layer3", create_graph=False)
    assert early.maps.shape == (4, 1, 4, 4)
    assert not early.maps.requires_grad


def test_hirescam_and_gradcam_differ_on_an_inner_layer(model: CamClassifier) -> None:
    x = images()
    hires = attribute(model, x, "hirescam", layer="backbone.layer3", create_graph=False).maps
    grad = attribute(model, x, "gradcam", layer="backbone.layer3", create_graph=False).maps
    assert not torch.allclose(hires, grad, atol=1e-5)


def test_any_timm_classifier_works_through_forward_features() -> None:
    torch.manual_seed(0)
    net = timm.create_model("resnet10t", num_classes=1, in_chans=1).eval()
    x = images(2)
    att = attribute(net, x, "gradcam", which="true", labels=torch.ones(2), create_graph=False)
    a = net.forward_features(x)
    expected = torch.einsum("nchw,kc->nkhw", a, net.fc.weight) / (a.shape[2] * a.shape[3])
    torch.testing.assert_close(att.maps, expected.detach(), rtol=1e-4, atol=1e-6)


def test_unknown_layer_lists_the_valid_names(model: CamClassifier) -> None:
    with pytest.raises(ValueError, match=r"unknown layer 'backbone\.layer9'; valid layers: ") as info:
        attribute(model, images(1), layer="backbone.layer9")
    message = str(info.value)
    assert "\n" not in message
    assert "backbone.layer4" in message and "head" in message
    assert set(layer_names(model)) >= {"backbone.layer3", "backbone.layer4.0.conv1"}
    with pytest.raises(ValueError, match="attribution method must be one of"):
        attribute(model, images(1), "saliency")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"outputs shape \(1, 1\)"):
        attribute(model, images(1), layer="head")


class _Smooth(nn.Module):
    """A smooth two-conv backbone so that double-backprop gradients can be checked numerically."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, stride=2, padding=1)
        self.act1 = nn.Softplus()
        self.conv2 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.act2 = nn.Softplus()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.act2(self.conv2(self.act1(self.conv1(x))))
        return out


@pytest.mark.parametrize(
    ("method", "layer"), [("hirescam", "backbone.act1"), ("gradcam", "backbone.act1"), ("hirescam", None)]
)
def test_maps_are_differentiable_double_backprop_checks_numerically(method: str, layer: str | None) -> None:
    torch.manual_seed(0)
    net = CamClassifier(_Smooth(), 4).double()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(2, 1, 4 if layer else 2, 4 if layer else 2, dtype=torch.float64)

    def fn(inp: torch.Tensor) -> torch.Tensor:
        maps = attribute(
            net,
            inp,
            method,
            layer=layer,
            which="true",  # type: ignore[arg-type]
            labels=torch.ones(2),
        ).maps
        return (maps * weights).sum()

    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-5)
