"""Audit maps: occlusion finds the pixels a model uses; maps are scored against lungs and drains."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from training.models import ArchSpec, CamClassifier, build_model
from training.saliency.eval import occlusion_maps, positive_class_maps, score_maps, upsample


class RegionMean(nn.Module):
    """logit = mean of the image inside rows 0..7, columns 24..31: only that corner matters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, 0:8, 24:32].mean(dim=(1, 2, 3))[:, None]


def test_occlusion_lights_up_the_region_the_model_reads() -> None:
    x = torch.ones(2, 1, 32, 32)
    maps = occlusion_maps(RegionMean(), x, patch=8, stride=4)
    assert maps.shape == (2, 1, 32, 32)
    inside = maps[:, 0, 0:8, 24:32].mean()
    outside = maps[:, 0, 16:, :16].mean()
    assert float(inside) > 0.2 and float(outside) == 0.0


def test_methods_give_non_negative_maps_of_the_expected_grid() -> None:
    torch.manual_seed(0)
    model = build_model(ArchSpec("classifier", "resnet10t"))
    assert isinstance(model, CamClassifier)
    x = torch.randn(2, 1, 64, 64)
    assert positive_class_maps(model, x, "hirescam").shape == (2, 1, 2, 2)
    inner = positive_class_maps(model, x, "gradcam:backbone.layer3")
    assert inner.shape == (2, 1, 4, 4) and float(inner.min()) >= 0
    with pytest.raises(ValueError, match="unknown attribution method 'lime'"):
        positive_class_maps(model, x, "lime")


def test_scores_against_lungs_and_drain() -> None:
    maps = np.zeros((2, 4, 4), np.float32)
    maps[0, :2, :2] = 1.0
    maps[1, 3, 3] = 1.0
    lungs = np.zeros((2, 4, 4), bool)
    lungs[:, :2, :] = True
    drain = np.zeros((4, 4), bool)
    drain[3, :] = True
    rows = score_maps(maps, lungs, [None, drain])
    assert rows[0]["lung_mass"] == 1.0 and np.isnan(rows[0]["drain_mass"])
    assert rows[1]["lung_mass"] == 0.0 and rows[1]["drain_mass"] == 1.0 and rows[1]["drain_area"] == 0.25
    assert rows[0]["lung_diff"] == pytest.approx(0.5 - 0.0)
    up = upsample(torch.from_numpy(maps[:, None]), (8, 8))
    assert up.shape == (2, 8, 8) and up.min() >= 0
