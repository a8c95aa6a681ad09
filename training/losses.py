"""Loss functions of the two stages, and the hook for extra loss terms.

Classifier (logit (N, 1) vs label (N, 1)): ``soft_f1`` (1 − F1 computed on probabilities over the batch,
the thesis's loss), ``bce`` (optionally with ``pos_weight``), ``focal`` (torchvision's sigmoid focal loss).
Segmenter (logits (N, 1, H, W) vs mask (N, 1, H, W)), segmentation-models-pytorch's binary losses:
``jaccard`` (the thesis's), ``dice``, ``bce``, ``focal``, ``lovasz``, and ``combo`` = BCE + Dice.

Extra terms: any callable ``(model, batch, outputs) -> (loss, logs)`` — ``outputs`` holds what the
task's forward pass produced (classifier: ``logit`` and the last feature map ``features``, from which
``model.cam_from_features`` gives the CAM; segmenter: ``logits``), ``logs`` a dict of floats that the
trainer averages and logs. Add a factory to :data:`LOSS_TERMS` and list it in the config's
``extra_losses`` (``[{"name": "my_term", "weight": 1.0, ...}]``); the trainer adds ``weight × loss``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn

from training.config import ConfigError, TrainConfig
from training.saliency.terms import HeatmapTerm, SaliencyMapTerm

Batch = dict[str, torch.Tensor]
Outputs = dict[str, torch.Tensor]


class LossTerm(Protocol):
    def __call__(
        self, model: nn.Module, batch: Batch, outputs: Outputs
    ) -> tuple[torch.Tensor, dict[str, float]]: ...


# name -> factory(**options) -> LossTerm: every term ``extra_losses`` can name, filled here at import.
LOSS_TERMS: dict[str, Callable[..., LossTerm]] = {
    "heatmap": HeatmapTerm,  # the heatmap loss of a classifier (training/saliency/heatmap_loss.py)
    "saliency_map": SaliencyMapTerm,  # the map loss of the saliency U-Net (training/saliency/losses.py)
}


def soft_f1_loss(logit: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """1 − soft F1 of the positive class over the batch. Shapes: (N, 1) logits and 0/1 targets."""
    p = torch.sigmoid(logit.float())
    y = target.float()
    tp = (p * y).sum()
    fp = (p * (1 - y)).sum()
    fn = ((1 - p) * y).sum()
    return 1 - 2 * tp / (2 * tp + fp + fn + eps)


class SoftF1(nn.Module):
    def forward(self, logit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return soft_f1_loss(logit, target)


class Focal(nn.Module):
    def __init__(self, alpha: float = 0.25, gamma: float = 2.0) -> None:
        super().__init__()
        self.alpha, self.gamma = alpha, gamma

    def forward(self, logit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from torchvision.ops import sigmoid_focal_loss

        out: torch.Tensor = sigmoid_focal_loss(logit.float(), target.float(), self.alpha, self.gamma, "mean")
        return out


class Combo(nn.Module):
    """``bce_weight`` × BCE + ``dice_weight`` × Dice."""

    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0) -> None:
        super().__init__()
        from segmentation_models_pytorch import losses

        self.bce = losses.SoftBCEWithLogitsLoss()
        self.dice = losses.DiceLoss("binary", from_logits=True)
        self.weights = (bce_weight, dice_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.weights[0] * self.bce(logits, target) + self.weights[1] * self.dice(
            logits, target
        )
        return out


def build_loss(config: TrainConfig, pos_weight: float | None = None) -> nn.Module:
    """The main loss of ``config`` (``loss`` and ``loss_options``)."""
    opts: dict[str, Any] = dict(config.loss_options)
    try:
        if config.role in ("classifier", "saliency"):
            if config.loss == "soft_f1":
                return SoftF1()
            if config.loss == "focal":
                return Focal(**opts)
            weight = torch.tensor([pos_weight]) if pos_weight is not None else None
            return nn.BCEWithLogitsLoss(pos_weight=weight, **opts)
        from segmentation_models_pytorch import losses

        if config.loss == "combo":
            return Combo(**opts)
        if config.loss == "bce":
            bce: nn.Module = losses.SoftBCEWithLogitsLoss(**opts)
            return bce
        factory = {
            "jaccard": losses.JaccardLoss,
            "dice": losses.DiceLoss,
            "focal": losses.FocalLoss,
            "lovasz": losses.LovaszLoss,
        }[config.loss]
        if config.loss in ("jaccard", "dice"):
            opts.setdefault("from_logits", True)
        return factory("binary", **opts)  # type: ignore[no-any-return]
    except TypeError as exc:
        raise ConfigError(f"loss_options for {config.loss}: {exc}") from exc


class WeightedTerm:
    def __init__(self, name: str, weight: float, term: LossTerm) -> None:
        self.name, self.weight, self.term = name, weight, term

    def __call__(
        self, model: nn.Module, batch: Batch, outputs: Outputs
    ) -> tuple[torch.Tensor, dict[str, float]]:
        value, logs = self.term(model, batch, outputs)
        return self.weight * value, {f"{self.name}/{k}": v for k, v in logs.items()} | {
            f"{self.name}/loss": float(value.detach())
        }


def build_extra_terms(config: TrainConfig) -> list[WeightedTerm]:
    """The config's ``extra_losses``, built from :data:`LOSS_TERMS`."""
    terms = []
    for spec in config.extra_losses:
        params = dict(spec)
        name = str(params.pop("name", ""))
        weight = float(params.pop("weight", 1.0))
        factory = LOSS_TERMS.get(name)
        if factory is None:
            raise ConfigError(f"unknown extra loss {name!r}; valid: {sorted(LOSS_TERMS)}")
        try:
            terms.append(WeightedTerm(name, weight, factory(**params)))
        except TypeError as exc:
            raise ConfigError(f"extra loss {name}: {exc}") from exc
    return terms
