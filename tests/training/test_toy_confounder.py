"""The test that can fail: on toy data with a confounder planted entirely inside the penalised region,
the heatmap loss must move attribution off the confounder; a loss with no effect must not pass.

Criterion (one function, applied to every variant): against a cross-entropy model trained with the same
seed, data and schedule, the variant's mean mass on the confounder (HiResCAM of the predicted class, on the
8×8 grid: the quantity the loss trains) is below half the cross-entropy model's. The cross-entropy
model must itself have learned the shortcut — on the decorrelated test set it ranks negatives with the
marker above positives without it (AUC on those pairs < 0.5) and its map puts more than a uniform map's
mass on the marker — otherwise there was nothing to move and the comparison proves nothing.

What this does *not* show: that the model stops using the marker. With this network the last layer's
receptive field (21 px of 32) reaches the marker from cells inside the relevant region, and the
heatmap-loss model here still ranks on the marker (docs/saliency.md, "toy confounder").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from training.models import CamClassifier
from training.saliency.heatmap_loss import HeatmapLoss, HeatmapLossConfig
from training.saliency.protocol import (
    FitSettings,
    Tensors,
    chance_and_ceiling,
    confounder_present,
    fit_classifier,
    maps,
    probabilities,
    region_mass,
    scheduled,
    shortcut_auc,
    small_cam_net,
)
from training.saliency.toy import toy_confounder_set

SETTINGS = FitSettings(epochs=8, lr=3e-3, batch_size=32, warmup_epochs=1, ramp_epochs=1, seed=0)


class DetachedHeatmapLoss(HeatmapLoss):
    """The same value, no gradient: a loss term that is computed and logged but has no effect."""

    def __call__(
        self, model: nn.Module, batch: Mapping[str, Any], outputs: Mapping[str, Any] | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        term, logs = super().__call__(model, batch, outputs)
        return term.detach(), logs


def _loss(variant: str, train: Tensors) -> HeatmapLoss | None:
    warmup, ramp = scheduled(SETTINGS, len(train))
    if variant == "ce":
        return None
    weight = 0.0 if variant == "zero_weight" else 1.0
    config = HeatmapLossConfig(weight=weight, region="custom", warmup_steps=warmup, ramp_steps=ramp)
    return DetachedHeatmapLoss(config) if variant == "detached" else HeatmapLoss(config)


def _train(variant: str, train: Tensors) -> CamClassifier:
    torch.set_num_threads(1)
    model = small_cam_net(width=8, stride=4, seed=0)  # 32 px → an 8×8 map
    fit_classifier(model, train, _loss(variant, train), SETTINGS)
    return model


def _confounder_mass(model: CamClassifier, test: Tensors) -> float:
    return float(np.nanmean(region_mass(maps(model, test.image), test.regions["confounder"])))


@pytest.fixture(scope="module")
def data() -> tuple[Tensors, Tensors, float, float]:
    train = toy_confounder_set(256, seed=1)  # marker in 90 % of positives, 10 % of negatives
    test = toy_confounder_set(200, seed=2, p_pos=0.5, p_neg=0.5)  # decorrelated
    chance = chance_and_ceiling(test.regions["confounder"], (8, 8))["chance"]
    ce = _train("ce", train)
    marker = confounder_present(test)
    assert shortcut_auc(probabilities(ce, test.image), test.label.numpy() > 0, marker) < 0.5
    return train, test, chance, _confounder_mass(ce, test)


@pytest.mark.parametrize(
    ("variant", "moves_attribution"),
    [("heatmap", True), ("zero_weight", False), ("detached", False)],
)
def test_the_heatmap_loss_moves_attribution_off_a_planted_confounder(
    data: tuple[Tensors, Tensors, float, float], variant: str, moves_attribution: bool
) -> None:
    train, test, chance, ce_mass = data
    assert ce_mass > chance, f"CE put {ce_mass:.3f} on the confounder, chance {chance:.3f}: toy too hard"
    mass = _confounder_mass(_train(variant, train), test)
    passes = mass < 0.5 * ce_mass
    assert passes == moves_attribution, f"{variant}: confounder mass {mass:.3f} vs CE {ce_mass:.3f}"
