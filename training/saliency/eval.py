"""Where a trained classifier looks: attribution maps on a batch, and their scores against regions.

Three attribution methods, each for the *predicted* class (y = s·z with s = sign(z): what the heatmap
loss trains) or the *positive* class (y = z, the pneumothorax logit: the map a radiologist is shown):

* ``hirescam`` — HiResCAM on the last feature map. For the GAP + linear head of :class:`CamClassifier`
  this is the closed form ReLU(s·(CAM − b))/(h·w)
  (:func:`training.saliency.attribution.closed_form_map`); equal to Grad-CAM on that layer, so it is *not*
  a second opinion there.
* ``gradcam:<layer>`` — Grad-CAM on an inner layer (e.g. ``backbone.layer3``, twice the resolution):
  the audit the heatmap-loss paper asks for (an independent re-check found Grad-CAM disagreeing).
* ``occlusion`` — the drop of y when a square patch (``patch`` px, moved by ``stride`` px) is set to 0
  in normalised units (the data set's mean grey), ReLU'd and averaged over the patches covering each
  pixel: model-agnostic and gradient-free, so it cannot be "gamed" by a flat gradient.

A map that is zero everywhere (no evidence for the class anywhere) has no mass to distribute: its
scores are NaN and it is left out of means (:func:`score_maps`).

:func:`score_maps` turns maps into per-image numbers with :mod:`triage.saliency_metrics`: the fraction
of map mass inside the lung fields, on the chest drain, and the inside-outside difference, after the
maps are upsampled (bilinear) to the image grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

from training.models import CamClassifier
from training.saliency.attribution import attribute, closed_form_map
from triage import saliency_metrics as sm

FloatArray = NDArray[np.float32]


def class_maps(
    model: nn.Module,
    x: torch.Tensor,
    method: str = "hirescam",
    which: str = "predicted",
    occlusion: tuple[int, int] = (16, 8),
) -> torch.Tensor:
    """ReLU'd maps (N, 1, h, w) of the ``which`` class ("predicted" or "positive"); see the module.
    ``occlusion``: (patch, stride) in pixels for the occlusion method."""
    if which not in ("predicted", "positive"):
        raise ValueError(f"which must be predicted or positive, got {which!r}")
    model.eval()
    n = len(x)
    choice = "predicted" if which == "predicted" else "true"
    labels = torch.ones(n)
    if method == "hirescam":
        if isinstance(model, CamClassifier):
            with torch.no_grad():
                closed = closed_form_map(model, x)
                sign = _sign(model, x) if which == "predicted" else torch.ones(n)
                return torch.relu(sign.view(-1, 1, 1, 1) * closed)
        maps = attribute(model, x, "hirescam", which=choice, labels=labels, create_graph=False).maps  # type: ignore[arg-type]
        return torch.relu(maps)
    if method.startswith("gradcam:"):
        layer = method.split(":", 1)[1]
        maps = attribute(
            model,
            x,
            "gradcam",
            layer=layer,
            which=choice,
            labels=labels,  # type: ignore[arg-type]
            create_graph=False,
        ).maps
        return torch.relu(maps)
    if method == "occlusion":
        return occlusion_maps(model, x, patch=occlusion[0], stride=occlusion[1], which=which)
    raise ValueError(f"unknown attribution method {method!r}; valid: hirescam, gradcam:<layer>, occlusion")


def positive_class_maps(model: nn.Module, x: torch.Tensor, method: str = "hirescam") -> torch.Tensor:
    """:func:`class_maps` of the positive class."""
    return class_maps(model, x, method, "positive")


def _sign(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.where(_logit(model, x) >= 0, 1.0, -1.0)


def _logit(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    logit = out[1] if isinstance(out, tuple) else out
    return logit.reshape(len(x), -1)[:, 0]


def occlusion_maps(
    model: nn.Module,
    x: torch.Tensor,
    patch: int = 16,
    stride: int = 8,
    batch: int = 64,
    which: str = "positive",
) -> torch.Tensor:
    """Occlusion sensitivity (N, 1, H, W): mean over covering patches of ReLU(y(x) − y(x occluded)),
    y = z for the positive class, s·z (s = sign z(x)) for the predicted class."""
    if patch < 1 or stride < 1:
        raise ValueError(f"patch and stride must be >= 1 px, got {patch} and {stride}")
    model.eval()
    n, _, h, w = x.shape
    ys = list(range(0, max(1, h - patch) + 1, stride))
    xs = list(range(0, max(1, w - patch) + 1, stride))
    if ys[-1] + patch < h:
        ys.append(h - patch)
    if xs[-1] + patch < w:
        xs.append(w - patch)
    boxes = [(y, xx) for y in ys for xx in xs]
    out = torch.zeros(n, 1, h, w)
    count = torch.zeros(1, 1, h, w)
    for y, xx in boxes:
        count[..., y : y + patch, xx : xx + patch] += 1
    with torch.no_grad():
        base = _logit(model, x)
        sign = torch.where(base >= 0, 1.0, -1.0) if which == "predicted" else torch.ones_like(base)
        for i in range(n):
            drops = []
            for start in range(0, len(boxes), batch):
                chunk = boxes[start : start + batch]
                variants = x[i : i + 1].repeat(len(chunk), 1, 1, 1)
                for k, (y, xx) in enumerate(chunk):
                    variants[k, :, y : y + patch, xx : xx + patch] = 0.0
                drops.append(torch.relu(sign[i] * (base[i] - _logit(model, variants))))
            drop = torch.cat(drops)
            for k, (y, xx) in enumerate(boxes):
                out[i, 0, y : y + patch, xx : xx + patch] += drop[k]
    return out / count.clamp_min(1)


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> FloatArray:
    """(N, 1, h, w) → (N, H, W) float32 numpy, bilinear, clipped at 0."""
    up = F.interpolate(maps.float(), size=size, mode="bilinear", align_corners=False)
    out: FloatArray = up[:, 0].clamp_min(0).cpu().numpy()
    return out


def score_maps(
    maps: FloatArray, lungs: NDArray[np.bool_], drains: Sequence[NDArray[np.bool_] | None]
) -> list[dict[str, float]]:
    """Per image: ``lung_mass`` (mass inside the lungs), ``lung_diff`` (Diff on the max-normalised map),
    ``drain_mass`` (mass on the drain; NaN without a drain) and ``drain_area`` (the drain's area fraction,
    what a uniform map would score)."""
    rows = []
    for i in range(len(maps)):
        m = maps[i].astype(np.float64)
        peak = float(m.max())
        row = {
            "lung_mass": sm.mass_inside(m, lungs[i]),
            "lung_diff": sm.inside_outside_diff(m / peak, lungs[i]) if peak > 0 else float("nan"),
            "drain_mass": float("nan"),
            "drain_area": float("nan"),
        }
        drain = drains[i]
        if drain is not None and drain.any():
            row["drain_mass"] = sm.mass_inside(m, drain)
            row["drain_area"] = float(drain.mean())
        rows.append(row)
    return rows
