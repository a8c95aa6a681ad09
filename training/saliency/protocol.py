"""The fair protocol's building blocks: a small CAM classifier, one training loop with the heatmap loss's
schedule, and the grid-level mass that is both the training objective and the reported metric.

Why a loop of its own: the experiments need per-step control the trainer does not give (a λ warm-up and
ramp, the heatmap term logged per epoch to see it plateau, a validation filter, dozens of small models in
one process); the loss itself is :class:`training.saliency.heatmap_loss.HeatmapLoss`, the same object
the trainer uses as an extra loss term, so what is measured here is what ``triage train classifier
--heatmap-loss`` trains.

Mass on the grid: with Ĥ the normalised map (N, 1, h, w) and R the fraction of each grid cell inside a
region (:func:`training.saliency.heatmap_loss.region_on_grid`), ``mass = Σ Ĥ R / Σ Ĥ`` per image — exactly
1 − the ``irrelevant``/``fraction`` heatmap term. Beside every mass figure the experiments print:

* **chance**: a uniform map's mass, mean(R);
* **ceiling**: the best map at that resolution, all mass on the purest cell, max(R) (and the floor
  min(R) for a region to avoid, which is 0 unless the region covers every cell).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.models import CamClassifier
from training.saliency.attribution import attribute, normalise_map
from training.saliency.heatmap_loss import HeatmapExplosion, HeatmapLoss, region_on_grid
from triage import metrics


def small_cam_net(in_channels: int = 1, width: int = 16, stride: int = 8, seed: int = 0) -> CamClassifier:
    """A small all-convolutional :class:`CamClassifier`: log2(stride) stride-2 stages, so the CAM grid
    is input/stride (64 px → 8×8 with the default). Seeded."""
    if stride < 1 or stride & (stride - 1):
        raise ValueError(f"stride must be a power of two, got {stride}")
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
    c = width
    for _ in range(int(math.log2(stride))):
        nxt = min(2 * c, 64)
        layers += [nn.Conv2d(c, nxt, 3, stride=2, padding=1), nn.BatchNorm2d(nxt), nn.ReLU()]
        layers += [nn.Conv2d(nxt, nxt, 3, padding=1), nn.BatchNorm2d(nxt), nn.ReLU()]
        c = nxt
    return CamClassifier(nn.Sequential(*layers), c)


@dataclass(frozen=True)
class Tensors:
    """A data set in memory: images (N, C, H, W), labels (N,) in {0, 1}, and named region masks
    (N, 1, H, W) in [0, 1] (an all-NaN mask = missing)."""

    image: torch.Tensor
    label: torch.Tensor
    regions: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.label)

    def subset(self, rows: torch.Tensor | np.ndarray | list[int]) -> Tensors:
        idx = torch.as_tensor(rows, dtype=torch.long)
        return Tensors(self.image[idx], self.label[idx], {k: v[idx] for k, v in self.regions.items()})


@dataclass(frozen=True)
class FitSettings:
    epochs: int = 10
    lr: float = 3e-3
    batch_size: int = 32
    warmup_epochs: int = 2  # cross-entropy only (λ = 0) for this many epochs
    ramp_epochs: int = 1  # then λ rises linearly to its value over this many epochs
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_classifier(
    model: CamClassifier,
    data: Tensors,
    heatmap: HeatmapLoss | None,
    settings: FitSettings,
    *,
    region_key: str = "region",
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    transform: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> list[dict[str, float]]:
    """Adam on BCE (+ the heatmap loss on ``data.regions[region_key]``, passed to the loss under its
    config's batch key). Returns one row per epoch: mean BCE, heatmap term (before λ), λ. The heatmap
    loss's own warm-up / ramp are in steps; :func:`scheduled` converts epochs. Raises
    :class:`HeatmapExplosion` if the total loss stops being finite. ``transform(images, rows)``, if
    given, replaces each batch's images (an augmentation; ``rows`` index ``data``)."""
    g = torch.Generator().manual_seed(settings.seed)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    history: list[dict[str, float]] = []
    n = len(data)
    for epoch in range(settings.epochs):
        model.train()
        order = torch.randperm(n, generator=g)
        sums = {"bce": 0.0, "term": 0.0, "lambda": 0.0, "inside": 0.0}
        steps = 0
        for start in range(0, n, settings.batch_size):
            idx = order[start : start + settings.batch_size]
            if len(idx) < 2:  # BatchNorm needs two images
                continue
            x, y = data.image[idx], data.label[idx].float()
            if transform is not None:
                x = transform(x, idx)
            a = model.features(x)
            logit = model.logit_from_features(a)
            bce = F.binary_cross_entropy_with_logits(logit[:, 0], y)
            loss = bce
            if heatmap is not None:
                batch = {"image": x, "label": y, heatmap.config.batch_key: data.regions[region_key][idx]}
                term, logs = heatmap(model, batch, {"features": a, "logit": logit})
                loss = bce + term
                sums["term"] += logs["heatmap_term"]
                sums["lambda"] += logs["heatmap_lambda"]
                sums["inside"] += logs["heatmap_inside"] if math.isfinite(logs["heatmap_inside"]) else 0.0
            if not bool(torch.isfinite(loss)):
                lam = heatmap.config.weight_at(heatmap.step - 1) if heatmap is not None else 0.0
                raise HeatmapExplosion(
                    f"the training loss is {float(loss)} in epoch {epoch} (λ = {lam:g}); lower the "
                    "heatmap weight, lengthen the warm-up / ramp or lower the learning rate"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums["bce"] += float(bce.detach())
            steps += 1
        row = {k: v / max(steps, 1) for k, v in sums.items()} | {"epoch": float(epoch)}
        history.append(row)
        if on_epoch:
            on_epoch(epoch, row)
    model.eval()
    return history


def scheduled(settings: FitSettings, n_train: int) -> tuple[int, int]:
    """(warmup_steps, ramp_steps) of the heatmap loss for ``settings``' epochs on ``n_train`` images (the
    loop drops a last batch of one image)."""
    per_epoch = sum(1 for s in range(0, n_train, settings.batch_size) if n_train - s >= 2)
    return settings.warmup_epochs * per_epoch, settings.ramp_epochs * per_epoch


@torch.no_grad()
def probabilities(model: nn.Module, images: torch.Tensor, batch: int = 128) -> np.ndarray:
    model.eval()
    out = [torch.sigmoid(model(images[s : s + batch])).reshape(-1) for s in range(0, len(images), batch)]
    return torch.cat(out).numpy().astype(np.float64)


def auc(model: nn.Module, data: Tensors) -> float:
    return float(metrics.roc_auc(probabilities(model, data.image), data.label.numpy() > 0))


def confounder_present(data: Tensors, key: str = "confounder") -> np.ndarray:
    """(N,) bool: images whose confounder mask exists (not all-NaN) and is non-empty."""
    m = data.regions[key].float().flatten(1)
    return (~torch.isnan(m).all(dim=1) & (torch.nan_to_num(m, nan=0.0).sum(dim=1) > 0)).numpy()


def shortcut_auc(p: np.ndarray, y: np.ndarray, confounder: np.ndarray) -> float | None:
    """AUC on the pairs a confounder detector gets wrong: positives without the confounder vs negatives
    with it (< 0.5: the model ranks on the confounder). None if either group is empty."""
    keep = (y & ~confounder) | (~y & confounder)
    if not (y[keep].any() and (~y[keep]).any()):
        return None
    return float(metrics.roc_auc(p[keep], y[keep]))


def accuracy(model: nn.Module, data: Tensors) -> float:
    return float(((probabilities(model, data.image) >= 0.5) == (data.label.numpy() > 0)).mean())


def maps(
    model: nn.Module,
    images: torch.Tensor,
    method: str = "hirescam",
    layer: str | None = None,
    which: str = "predicted",
    labels: torch.Tensor | None = None,
    batch: int = 64,
) -> torch.Tensor:
    """Normalised attribution maps Ĥ (N, 1, h, w) (ReLU, ÷ max), detached."""
    model.eval()
    out = []
    for s in range(0, len(images), batch):
        lab = labels[s : s + batch] if labels is not None else None
        att = attribute(
            model,
            images[s : s + batch],
            method,  # type: ignore[arg-type]
            layer=layer,
            which=which,  # type: ignore[arg-type]
            labels=lab,
            create_graph=False,
        )
        out.append(normalise_map(att.maps))
    return torch.cat(out)


def region_mass(norm_maps: torch.Tensor, region: torch.Tensor) -> np.ndarray:
    """Σ Ĥ R / Σ Ĥ per image on the map's grid (NaN for a map without mass or a missing region)."""
    missing = torch.isnan(region.float()).flatten(1).all(dim=1)
    r = region_on_grid(torch.nan_to_num(region.float(), nan=0.0), (norm_maps.shape[2], norm_maps.shape[3]))
    mass = norm_maps.flatten(1).sum(dim=1)
    frac = (norm_maps * r).flatten(1).sum(dim=1) / mass.clamp_min(1e-12)
    frac[(mass <= 0) | missing] = float("nan")
    return frac.numpy().astype(np.float64)


def chance_and_ceiling(region: torch.Tensor, grid: tuple[int, int]) -> dict[str, float]:
    """Per-image means of a uniform map's mass (mean R), the best attainable mass (max R) and the lowest
    (min R) on ``grid``; images with a missing (all-NaN) or empty region are left out."""
    missing = torch.isnan(region.float()).flatten(1).all(dim=1)
    r = region_on_grid(torch.nan_to_num(region.float(), nan=0.0), grid).flatten(1)
    keep = ~missing & (r.sum(dim=1) > 0)
    if not bool(keep.any()):
        return {"chance": float("nan"), "ceiling": float("nan"), "floor": float("nan")}
    r = r[keep]
    return {
        "chance": float(r.mean(dim=1).mean()),
        "ceiling": float(r.amax(dim=1).mean()),
        "floor": float(r.amin(dim=1).mean()),
    }
