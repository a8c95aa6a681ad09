"""The heatmap loss: a penalty on attribution that falls where it should not (seeds.md, B).

``loss = classification loss + λ(step) · heatmap term``. The heatmap term is computed on the normalised
attribution map Ĥ = ReLU(H)/max(H) (N, 1, h, w) of :mod:`training.saliency.attribution`, with the region mask
(lung fields, the pneumothorax mask, or any region the batch carries) resized to the map's grid by area
averaging, so that a grid cell holds the *fraction* R ∈ [0, 1] of its pixels inside the region.

``mode`` says what is penalised, ``reduction`` how the cells are summed (per image, then the mean over
images):

=============  ==========================================  ==========================================
reduction      ``irrelevant`` (attribution outside R)       ``relevant`` (missing attribution inside R)
=============  ==========================================  ==========================================
``fraction``   Σ Ĥ(1 − R) / Σ Ĥ — the map's mass fraction   1 − Σ Ĥ R / Σ Ĥ (images with Σ R > 0)
(default)      outside: exactly 1 − ``mass_inside``, the
               metric the experiments report
``sum``        Σ Ĥ(1 − R) — the source's reduction ("the     Σ R(1 − Ĥ)
               sum of the heatmap values outside")
``mean``       Σ Ĥ(1 − R) / (h·w) — the first version's     Σ R(1 − Ĥ) / Σ R
=============  ==========================================  ==========================================

``fraction`` and ``mean`` lie in [0, 1]; ``sum`` in [0, h·w], so a given λ weighs h·w times more than
with ``mean``. The map is differentiable (``create_graph=True``), so the term changes the backbone's
gradients, not only the head's.

Schedule: ``warmup_steps`` training steps at λ = 0 (cross-entropy only: the classifier first learns
something to attribute), then λ rises linearly over ``ramp_steps`` to its value. A term that is not
finite raises :class:`HeatmapExplosion` naming the step and λ — never a silent NaN.

Bad input:

* a batch without the region entry → ValueError;
* images whose region mask is missing — marked by a ``<key>_valid`` (N,) bool entry or an all-NaN mask —
  → ValueError by default; with ``on_missing="skip"`` they are left out of the term and counted in the
  ``heatmap_skipped`` log (a documented fallback, never silent);
* a map grid smaller than ``min_grid`` × ``min_grid`` → ValueError (use a larger input or an earlier
  ``layer``); an unknown ``layer`` → ValueError listing the valid names
  (:mod:`training.saliency.attribution`).

Shape: ``image`` (N, C, H, W); region masks (N, 1, H, W) or (N, H, W), values in [0, 1].
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

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
from training.saliency.options import MODES, Mode
from training.saliency.options import REGIONS as CLI_REGIONS
from training.saliency.options import Region as CliRegion

EPS = 1e-8

# The CLI's regions (training.saliency.options) plus "custom": a region the caller puts in the batch under
# "region" (the experiments of training/saliency/control.py and the toy-confounder test).
Region = CliRegion | Literal["custom"]
REGIONS: tuple[Region, ...] = (*CLI_REGIONS, "custom")
BATCH_KEY = {"lungs": "lungs", "lesion": "mask", "custom": "region"}
Reduction = Literal["fraction", "sum", "mean"]
REDUCTIONS: tuple[Reduction, ...] = ("fraction", "sum", "mean")
OnMissing = Literal["error", "skip"]
ON_MISSING: tuple[OnMissing, ...] = ("error", "skip")


class HeatmapExplosion(FloatingPointError):
    """The heatmap term (or λ × term) is not finite: one line naming the step, λ and what to change."""


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
    reduction: Reduction = "fraction"
    warmup_steps: int = 0
    ramp_steps: int = 0
    on_missing: OnMissing = "error"
    min_grid: int = 1

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
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"--heatmap-reduction must be one of {REDUCTIONS}, got {self.reduction!r}")
        if self.on_missing not in ON_MISSING:
            raise ValueError(f"heatmap on_missing must be one of {ON_MISSING}, got {self.on_missing!r}")
        for name in ("warmup_steps", "ramp_steps", "min_grid"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"heatmap {name} must be an integer >= 0, got {value!r}")

    def weight_at(self, step: int) -> float:
        """λ at training step ``step`` (0-based): 0 during the warm-up, then a linear ramp to ``weight``."""
        if step < self.warmup_steps:
            return 0.0
        if self.ramp_steps == 0:
            return self.weight
        return self.weight * min(1.0, (step - self.warmup_steps + 1) / self.ramp_steps)

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


def irrelevant_term(
    norm_maps: torch.Tensor, inside: torch.Tensor, reduction: Reduction = "fraction"
) -> torch.Tensor:
    """Attribution outside the region (module docstring's table): Ĥ (N, 1, h, w) in [0, 1], R the inside
    fraction on the same grid. Maps without mass contribute 0 (they are counted as ``heatmap_dead``)."""
    _check_same_grid(norm_maps, inside)
    outside = (norm_maps * (1.0 - inside)).flatten(1).sum(dim=1)
    if reduction == "fraction":
        per_image = outside / norm_maps.flatten(1).sum(dim=1).clamp_min(EPS)
    elif reduction == "sum":
        per_image = outside
    else:
        per_image = outside / (norm_maps.shape[2] * norm_maps.shape[3])
    return per_image.mean()


def relevant_term(
    norm_maps: torch.Tensor, inside: torch.Tensor, reduction: Reduction = "fraction"
) -> torch.Tensor:
    """Missing attribution inside the region, mean over images with Σ R > 0; 0 (still part of the graph)
    if there are none."""
    _check_same_grid(norm_maps, inside)
    area = inside.flatten(1).sum(dim=1)
    keep = area > 0
    if not bool(keep.any()):
        return norm_maps.sum() * 0.0
    if reduction == "fraction":
        mass = norm_maps.flatten(1).sum(dim=1).clamp_min(EPS)
        per_image = 1.0 - (norm_maps * inside).flatten(1).sum(dim=1) / mass
        return per_image[keep].mean()
    missing = (inside * (1.0 - norm_maps)).flatten(1).sum(dim=1)
    if reduction == "sum":
        return missing[keep].mean()
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
        self.step = 0  # training steps seen (calls with the model in training mode): drives λ(step)

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
        valid = self._valid(batch, region)
        step = self.step
        if model.training:
            self.step += 1
        weight = cfg.weight_at(step)
        norm = self.maps(model, batch, outputs)
        h, w = norm.shape[2], norm.shape[3]
        if min(h, w) < cfg.min_grid:
            raise ValueError(
                f"the attribution grid is {h}x{w}, below the required {cfg.min_grid}x{cfg.min_grid}: use a "
                "larger input size or an earlier layer (--heatmap-layer)"
            )
        inside = region_on_grid(torch.nan_to_num(region.float(), nan=0.0).to(norm.device), (h, w))
        used, used_inside = norm[valid], inside[valid]
        if len(used) == 0:
            term = norm.sum() * 0.0
        elif cfg.mode == "irrelevant":
            term = irrelevant_term(used, used_inside, cfg.reduction)
        else:
            term = relevant_term(used, used_inside, cfg.reduction)
        if not bool(torch.isfinite(term)):
            raise HeatmapExplosion(
                f"the heatmap term is {float(term.detach())} at step {step} (λ = {weight:g}); the map or the "
                "model diverged: lower --heatmap-weight, lengthen the warm-up / ramp or the learning rate"
            )
        with torch.no_grad():
            mass = used.flatten(1).sum(dim=1)
            dead = float((mass <= 0).float().mean()) if len(used) else float("nan")
            frac = (used * used_inside).flatten(1).sum(dim=1) / mass.clamp_min(1e-12)
            frac = frac[mass > 0]
        logs = {
            "heatmap_term": float(term.detach()),
            "heatmap_inside": float(frac.mean()) if len(frac) else float("nan"),
            "heatmap_dead": dead,
            "heatmap_skipped": float(len(norm) - len(used)),
            "heatmap_lambda": weight,
        }
        return weight * term, logs

    def _valid(self, batch: Mapping[str, Any], region: torch.Tensor) -> torch.Tensor:
        """(N,) bool: images whose region mask exists (``<key>_valid`` entry, else not all-NaN)."""
        flag = batch.get(f"{self.config.batch_key}_valid")
        if isinstance(flag, torch.Tensor):
            valid = flag.reshape(-1).bool()
        else:
            valid = ~torch.isnan(region.float()).flatten(1).all(dim=1)
        missing = int((~valid).sum())
        if missing and self.config.on_missing == "error":
            raise ValueError(
                f"{missing} of {len(valid)} images in the batch have no {self.config.region} mask; add the "
                "masks, or pass on_missing='skip' to leave those images out of the heatmap term (logged as "
                "heatmap_skipped)"
            )
        return valid.to(region.device)
