"""The saliency work's extra loss terms for the trainer, listed by name in :data:`training.losses.LOSS_TERMS`.

* loss term ``heatmap`` (:class:`HeatmapTerm`): the heatmap loss of
  :mod:`training.saliency.heatmap_loss`, listed in a classifier config as ``extra_losses: [{name: heatmap,
  weight: λ, method: hirescam, which: predicted, mode: irrelevant, region: lungs, layer: null, reduction:
  fraction, warmup_steps: 0, ramp_steps: 0}]`` — what ``triage train classifier --heatmap-loss hirescam
  --heatmap-weight λ`` writes. Before training starts it checks the data: every
  training image needs its region mask (lung fields, or the pneumothorax mask for ``region: lesion``),
  none of them empty.
* loss term ``saliency_map`` (:class:`SaliencyMapTerm`): the map part of the saliency U-Net's mixed
  objective (:mod:`training.saliency.losses`).

The augmentation ``corruption`` of ``--corruption-augment`` is :class:`training.augment.CorruptionAugment`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from training.saliency.heatmap_loss import HeatmapLoss, HeatmapLossConfig
from training.saliency.losses import MAP_LOSSES, MapLoss, map_loss


class DataCheckError(ValueError):
    """The training data cannot feed a loss term; one line naming the problem and the fix."""


class HeatmapTerm:
    """The heatmap loss as an extra term (the trainer multiplies by the config's ``weight``)."""

    def __init__(
        self,
        method: str = "hirescam",
        which: str = "predicted",
        mode: str = "irrelevant",
        region: str = "lungs",
        layer: str | None = None,
        reduction: str = "fraction",
        warmup_steps: int = 0,
        ramp_steps: int = 0,
    ) -> None:
        self.config = HeatmapLossConfig(
            method=method,  # type: ignore[arg-type]
            weight=1.0,  # the trainer multiplies by the config's weight; the schedule scales it
            which=which,  # type: ignore[arg-type]
            mode=mode,  # type: ignore[arg-type]
            region=region,  # type: ignore[arg-type]
            layer=layer,
            reduction=reduction,  # type: ignore[arg-type]
            warmup_steps=warmup_steps,
            ramp_steps=ramp_steps,
        )
        self.loss = HeatmapLoss(self.config)

    def check_data(self, grids: Any, rows: Sequence[int]) -> None:
        """Raise DataCheckError when a training image lacks its region mask or has an empty one."""
        check_region_masks(grids, rows, self.config.region, self.config.mode)

    def __call__(
        self, model: nn.Module, batch: Mapping[str, torch.Tensor], outputs: Mapping[str, Any]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        return self.loss(model, batch, outputs)


def check_region_masks(grids: Any, rows: Sequence[int], region: str, mode: str) -> None:
    """Lung masks must exist for every training row and none may be empty; lesion masks must exist for
    at least one positive row (negatives legitimately have none)."""
    ids = [grids.ids[r] for r in rows]
    if region == "lungs":
        if grids.lungs is None:
            raise DataCheckError(
                f"the heatmap loss needs lung-field masks, but {grids.data_root} has none: add "
                "lungs/<id>.png (folder format; `triage synth` writes them) or train without --heatmap-loss"
            )
        missing = [ids[k] for k, r in enumerate(rows) if not grids.items[r].get("has_lungs", True)]
        if missing:
            raise DataCheckError(
                f"{len(missing)} of {len(rows)} training images have no lung mask (e.g. {missing[0]}); the "
                "heatmap loss needs one per image: add lungs/<id>.png or drop those images"
            )
        empty = [ids[k] for k, r in enumerate(rows) if not np.asarray(grids.lungs[r]).any()]
        if empty:
            raise DataCheckError(
                f"{len(empty)} of {len(rows)} training images have an all-empty lung mask (e.g. {empty[0]}); "
                "outside-the-lungs would be the whole image: fix or drop those masks"
            )
        return
    positives = [r for r in rows if grids.labels[r]]
    if not positives:
        raise DataCheckError(
            f"--heatmap-region lesion needs positive images with pneumothorax masks; "
            f"the {len(rows)} training images have none"
        )
    empty = [grids.ids[r] for r in positives if not np.asarray(grids.masks[r]).any()]
    if empty:
        raise DataCheckError(
            f"{len(empty)} positive training images have an empty pneumothorax mask on the "
            f"model grid (e.g. {empty[0]})"
        )


class SaliencyMapTerm:
    """α·L_map(decoder, T) + (1 − α)·L_map(CAM, T) for the saliency U-Net (outputs ``map_logits`` and
    ``cam``; the batch's ``target`` (N, 1, H, W) and ``has_target`` (N,))."""

    def __init__(self, kind: str = "bce", alpha: float = 1.0) -> None:
        if kind not in MAP_LOSSES:
            raise ValueError(f"--map-loss must be one of {MAP_LOSSES}, got {kind!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"--alpha must be in [0, 1], got {alpha}")
        self.kind: MapLoss = kind  # type: ignore[assignment]
        self.alpha = alpha

    def __call__(
        self, model: nn.Module, batch: Mapping[str, torch.Tensor], outputs: Mapping[str, Any]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        target, valid = batch["target"], batch.get("has_target")
        maps, cam = outputs["map_logits"], outputs["cam"]
        decoder = map_loss(maps.float(), target, self.kind, valid) if self.alpha > 0 else maps.sum() * 0.0
        cam_term = map_loss(cam.float(), target, self.kind, valid) if self.alpha < 1 else cam.sum() * 0.0
        total = self.alpha * decoder + (1.0 - self.alpha) * cam_term
        return total, {"decoder": float(decoder.detach()), "cam": float(cam_term.detach())}
