"""What differs between the roles: the forward pass, the loss inputs, the validation metric, which images
a role trains on, and prediction with test-time augmentation (the runtime's own TTA code)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from training.losses import Batch, Outputs
from training.models import CamClassifier, Segmenter
from triage import metrics
from triage.cascade import tta as tta_ops


@dataclass(frozen=True)
class Task:
    role: str  # classifier | segmenter | baseline | saliency (training/saliency/task.py, fusion_train.py)

    @property
    def metric(self) -> str:
        return "auc" if self.role in ("classifier", "saliency") else "dice_per_image"

    @property
    def positives_only(self) -> bool:
        """The "one case" U-Net trains (and is validated) on positive images only."""
        return self.role == "segmenter"

    def encoder(self, model: nn.Module) -> nn.Module:
        if isinstance(model, CamClassifier):
            return model.backbone
        assert isinstance(model, Segmenter)
        encoder = model.net.encoder
        assert isinstance(encoder, nn.Module)
        return encoder

    def forward(self, model: nn.Module, batch: Batch) -> Outputs:
        x = batch["image"]
        if isinstance(model, CamClassifier):
            features = model.features(x)
            return {"logit": model.logit_from_features(features), "features": features}
        return {"logits": model(x)}

    def loss_inputs(self, outputs: Outputs, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        if self.role == "classifier":
            return outputs["logit"], batch["label"]
        return outputs["logits"], batch["mask"]

    def score(self, outputs: Outputs) -> NDArray[np.float32]:
        """Probabilities: (N,) for the classifier, (N, H, W) maps for a segmenter."""
        key = "logit" if self.role == "classifier" else "logits"
        p = torch.sigmoid(outputs[key].float()).detach().cpu().numpy()
        return p.reshape(len(p)) if self.role == "classifier" else p[:, 0]

    def validation_metrics(self, scores: list[NDArray[np.float32]], batches: list[Batch]) -> dict[str, float]:
        if self.role == "classifier":
            p = np.concatenate(scores)
            y = np.concatenate([b["label"].numpy().reshape(-1) for b in batches]) > 0.5
            if y.all() or not y.any():
                return {"auc": float("nan")}
            return {"auc": metrics.roc_auc(p, y)}
        pred = np.concatenate(scores) > 0.5
        truth = np.concatenate([b["mask"].numpy()[:, 0] for b in batches]) > 0.5
        return {
            "dice_per_image": metrics.mean_dice_per_image(pred, truth),
            "dice": metrics.pooled_dice(pred, truth),
        }


def predict(
    model: nn.Module, task: Task, batches: Iterable[Batch], device: torch.device, transforms: tuple[str, ...]
) -> Iterable[tuple[Batch, NDArray[np.float32]]]:
    """Per batch: (batch, probabilities averaged over ``transforms`` with the runtime's TTA code).

    Classifier: (N,) P(pneumothorax); segmenter: (N, H, W) pixel probabilities."""
    model.eval()
    with torch.inference_mode():
        for batch in batches:
            x = batch["image"].numpy()
            expanded = torch.from_numpy(tta_ops.expand(x, transforms)).to(device)
            p = task.score(task.forward(model, {"image": expanded}))
            n = len(x)
            merged = (
                tta_ops.merge_scalars(p, n, transforms)
                if task.role == "classifier"
                else tta_ops.merge_maps(p, n, transforms)
            )
            yield batch, merged.astype(np.float32)
