"""Losses of the saliency U-Net (seeds.md, C and D): map losses and the mixed objective.

Map losses compare predicted map *logits* P (N, 1, h, w) with a target heatmap T (N, 1, H, W) in [0, 1];
T is brought to P's grid first (area averaging when shrinking, bilinear when enlarging). Per image:

* ``bce``: mean over pixels of BCE-with-logits(P, T) (T as a soft label);
* ``mse``: mean over pixels of (sigmoid(P) − T)²;
* ``kl``: KL(T̂ ‖ softmax(P)), T̂ = T / Σ T: P is a log-density over the pixels. Images with Σ T = 0 are
  skipped (the divergence is undefined).

``valid`` (N,) bool marks the images that have a target at all (eye-gaze images without fixations do
not); a batch without any valid image gives a zero loss that is still part of the graph.

The mixed objective (variant 3 of the source, with the head's CAM as the "generator")::

    L = γ · BCE(logit, label) + (1 − γ) · [α · L_map(decoder, T) + (1 − α) · L_map(CAM, T)]

α = 1 trains the decoder alone against the target; α < 1 also pulls the classification head's own CAM
(on the deepest encoder features) towards the target, so the classifier looks where the target does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.saliency.options import MAP_LOSSES, MapLoss


def target_on_grid(target: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(N, 1, H, W) target → (N, 1, h, w): area average when shrinking, bilinear when enlarging."""
    if tuple(target.shape[-2:]) == tuple(grid):
        return target
    if grid[0] <= target.shape[-2] and grid[1] <= target.shape[-1]:
        return F.adaptive_avg_pool2d(target, grid)
    return F.interpolate(target, size=grid, mode="bilinear", align_corners=False)


def map_loss_per_image(
    logits: torch.Tensor, target: torch.Tensor, kind: MapLoss
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss (N,), usable (N,) bool) for map logits (N, 1, h, w) against ``target`` (N, 1, H, W)."""
    if kind not in MAP_LOSSES:
        raise ValueError(f"map loss must be one of {MAP_LOSSES}, got {kind!r}")
    t = target_on_grid(target.to(logits.dtype), (logits.shape[-2], logits.shape[-1])).clamp(0.0, 1.0)
    n = len(logits)
    if kind == "bce":
        loss = F.binary_cross_entropy_with_logits(logits, t, reduction="none").reshape(n, -1).mean(dim=1)
        return loss, torch.ones(n, dtype=torch.bool, device=logits.device)
    if kind == "mse":
        loss = ((torch.sigmoid(logits) - t) ** 2).reshape(n, -1).mean(dim=1)
        return loss, torch.ones(n, dtype=torch.bool, device=logits.device)
    mass = t.reshape(n, -1).sum(dim=1)
    p = t.reshape(n, -1) / mass.clamp_min(1e-12)[:, None]
    log_q = F.log_softmax(logits.reshape(n, -1), dim=1)
    plogp = torch.where(p > 0, p * torch.log(p.clamp_min(1e-12)), torch.zeros_like(p))
    loss = (plogp - p * log_q).sum(dim=1)
    return loss, mass > 0


def map_loss(
    logits: torch.Tensor, target: torch.Tensor, kind: MapLoss, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean of :func:`map_loss_per_image` over the usable, valid images (0 in the graph if none)."""
    per_image, usable = map_loss_per_image(logits, target, kind)
    if valid is not None:
        usable = usable & valid.to(usable.device).bool().reshape(-1)
    if not bool(usable.any()):
        return logits.sum() * 0.0
    return per_image[usable].mean()


def mixed_objective(
    map_logits: torch.Tensor,
    logit: torch.Tensor,
    cam: torch.Tensor,
    target: torch.Tensor,
    label: torch.Tensor,
    *,
    kind: MapLoss = "bce",
    alpha: float = 1.0,
    cls_weight: float = 0.5,
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The total loss and its parts (see the module docstring)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"--alpha must be in [0, 1], got {alpha}")
    if not 0.0 <= cls_weight <= 1.0:
        raise ValueError(f"--cls-weight must be in [0, 1], got {cls_weight}")
    cls = F.binary_cross_entropy_with_logits(logit.reshape(-1), label.reshape(-1).to(logit.dtype))
    decoder = map_loss(map_logits, target, kind, valid) if alpha > 0 else map_logits.sum() * 0.0
    cam_term = map_loss(cam, target, kind, valid) if alpha < 1 else cam.sum() * 0.0
    total = cls_weight * cls + (1.0 - cls_weight) * (alpha * decoder + (1.0 - alpha) * cam_term)
    logs = {
        "cls_loss": float(cls.detach()),
        "decoder_loss": float(decoder.detach()),
        "cam_loss": float(cam_term.detach()),
    }
    return total, logs
