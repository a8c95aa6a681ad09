"""The heatmap loss: a penalty on attribution that falls where it should not (seeds.md, B).

``loss = classification loss + λ · heatmap term``. The heatmap term is computed on the normalised
attribution map Ĥ = ReLU(H)/max(H) (N, 1, h, w) of :mod:`training.saliency.attribution`, with the region mask
(lung fields, or the pneumothorax mask) resized to the map's grid by area averaging, so that a grid cell
holds the *fraction* R ∈ [0, 1] of its pixels inside the region:

* ``irrelevant`` (default; the source's loss): ``mean(Ĥ ⊙ (1 − R))`` over images and cells — attribution
  outside the region (outside the lung fields) is penalised.
* ``relevant``: ``mean over images with a non-empty region of Σ R ⊙ (1 − Ĥ) / Σ R`` — relevant cells whose
  attribution is below the map's peak (missing mass inside) are penalised. With ``region="lesion"`` only
  positive images (with a pneumothorax mask) contribute.

Both terms are in [0, 1]. The map is differentiable (``create_graph=True``), so the term changes the
backbone's gradients, not only the head's.

Shape: ``image`` (N, C, H, W); ``lungs`` / ``mask`` (N, 1, H, W) or (N, H, W), values in [0, 1].
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from training.saliency.attribution import (
    CLASS_CHOICES,
    METHODS,
    ClassChoice,
    Method,
    attribute,
    attribute_from_features,
    normalise_map,
)
from training.saliency.options import MODES, REGIONS, Mode, Region

BATCH_KEY = {"lungs": "lungs", "lesion": "mask"}


@dataclass(frozen=True)
class HeatmapLossConfig:
    """``--heatmap-loss METHOD --heatmap-weight λ --heatmap-class C --heatmap-mode M --heatmap-region R
    [--heatmap-layer NAME]`` of ``triage train classifier``."""

    method: Method = "hirescam"
    weight: float = 1.0
    which: ClassChoice = "predicted"
    mode: Mode = "irrelevant"
    region: Region = "lungs"
    layer: str | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"--heatmap-loss must be one of {METHODS}, got {self.method!r}")
        if self.which not in CLASS_CHOICES:
            raise ValueError(f"--heatmap-class must be one of {CLASS_CHOICES}, got {self.which!r}")
        if self.mode not in MODES:
            raise ValueError(f"--heatmap-mode must be one of {MODES}, got {self.mode!r}")
        if self.region not in REGIONS:
            raise ValueError(f"--heatmap-region must be one of {REGIONS}, got {self.region!r}")
        if not (self.weight >= 0.0 and self.weight < float("inf")):
            raise ValueError(f"--heatmap-weight must be a finite number >= 0, got {self.weight}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def batch_key(self) -> str:
        """The batch entry holding the region masks: ``lungs`` or ``mask``."""
        return BATCH_KEY[self.region]


def region_on_grid(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(N, 1, H, W) or (N, H, W) mask → (N, 1, h, w): the fraction of each grid cell inside the region."""
    m = mask.float()
    if m.ndim == 3:
        m = m[:, None]
    if m.ndim != 4 or m.shape[1] != 1:
        raise ValueError(f"region masks must be (N, 1, H, W) or (N, H, W), got {tuple(mask.shape)}")
    return F.adaptive_avg_pool2d(m, grid).clamp(0.0, 1.0)


def irrelevant_term(norm_maps: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """mean(Ĥ ⊙ (1 − R)): Ĥ (N, 1, h, w) in [0, 1], R the inside fraction on the same grid."""
    _check_same_grid(norm_maps, inside)
    return (norm_maps * (1.0 - inside)).mean()


def relevant_term(norm_maps: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """Mean over images with Σ R > 0 of Σ R ⊙ (1 − Ĥ) / Σ R; 0 (still part of the graph) if there are none."""
    _check_same_grid(norm_maps, inside)
    area = inside.flatten(1).sum(dim=1)
    missing = (inside * (1.0 - norm_maps)).flatten(1).sum(dim=1)
    keep = area > 0
    if not bool(keep.any()):
        return norm_maps.sum() * 0.0
    return (missing[keep] / area[keep]).mean()


def _check_same_grid(norm_maps: torch.Tensor, inside: torch.Tensor) -> None:
    if norm_maps.shape != inside.shape:
        raise ValueError(f"map {tuple(norm_maps.shape)} and region {tuple(inside.shape)} differ in shape")


class HeatmapLoss:
    """The extra loss term: ``(model, batch, outputs) -> (λ · term, logs)``.

    ``batch`` is a mapping with ``image`` (N, C, H, W), ``label`` (N,) and the region masks under
    ``lungs`` or ``mask``. ``outputs`` may carry ``features`` (the last feature map A) and ``logit`` of the
    training forward pass; then the map is computed from them without a second forward pass (default layer
    only). Logs: ``heatmap_term`` (before λ), ``heatmap_inside`` (fraction of map mass inside the region)
    and ``heatmap_dead`` (fraction of images whose map is zero everywhere: no evidence for the explained
    class at any position, e.g. when the head's bias alone carries the decision — a map with no mass
    cannot be penalised, the "gaming" the source documents warn about).
    """

    def __init__(self, config: HeatmapLossConfig) -> None:
        self.config = config

    def maps(
        self, model: nn.Module, batch: Mapping[str, Any], outputs: Mapping[str, Any] | None = None
    ) -> torch.Tensor:
        """The normalised, differentiable maps Ĥ (N, 1, h, w) for ``batch``."""
        cfg = self.config
        labels = batch.get("label")
        features = outputs.get("features") if isinstance(outputs, Mapping) else None
        logits = outputs.get("logit") if isinstance(outputs, Mapping) else None
        if cfg.layer is None and isinstance(features, torch.Tensor) and isinstance(logits, torch.Tensor):
            att = attribute_from_features(features, logits, cfg.method, which=cfg.which, labels=labels)
        else:
            att = attribute(
                model, batch["image"], cfg.method, layer=cfg.layer, which=cfg.which, labels=labels
            )
        return normalise_map(att.maps)

    def __call__(
        self, model: nn.Module, batch: Mapping[str, Any], outputs: Mapping[str, Any] | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        region = batch.get(cfg.batch_key)
        if region is None:
            raise ValueError(
                f"the heatmap loss needs {cfg.region} masks but the batch has no {cfg.batch_key!r} entry"
            )
        norm = self.maps(model, batch, outputs)
        inside = region_on_grid(region.to(norm.device), (norm.shape[2], norm.shape[3]))
        term = irrelevant_term(norm, inside) if cfg.mode == "irrelevant" else relevant_term(norm, inside)
        with torch.no_grad():
            mass = norm.flatten(1).sum(dim=1)
            dead = float((mass <= 0).float().mean())
            frac = (norm * inside).flatten(1).sum(dim=1) / mass.clamp_min(1e-12)
            frac = frac[mass > 0]
        logs = {
            "heatmap_term": float(term.detach()),
            "heatmap_inside": float(frac.mean()) if len(frac) else float("nan"),
            "heatmap_dead": dead,
        }
        return cfg.weight * term, logs
