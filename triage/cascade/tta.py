"""Test-time augmentation by flips: expand a batch, then undo the flips on maps and average."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

Batch = NDArray[np.float32]


def _flip(x: Batch, name: str) -> Batch:
    if name == "none":
        return x
    if name == "hflip":
        return x[..., ::-1]
    if name == "vflip":
        return x[..., ::-1, :]
    raise ValueError(f"unknown TTA {name!r}; valid: none, hflip, vflip")


def expand(batch: Batch, transforms: tuple[str, ...]) -> Batch:
    """(N, C, H, W) → (T·N, C, H, W): the batch under each transform, transform-major."""
    return np.ascontiguousarray(np.concatenate([_flip(batch, t) for t in transforms], axis=0))


def merge_scalars(values: Batch, n: int, transforms: tuple[str, ...]) -> Batch:
    """(T·N, ...) per-image scalars → (N, ...) means over transforms."""
    out: Batch = values.reshape(len(transforms), n, *values.shape[1:]).mean(axis=0)
    return out


def merge_maps(maps: Batch, n: int, transforms: tuple[str, ...]) -> Batch:
    """(T·N, ..., H, W) maps → (N, ..., H, W): flips undone, then averaged."""
    stacked = maps.reshape(len(transforms), n, *maps.shape[1:])
    out: Batch = np.mean([_flip(stacked[i], t) for i, t in enumerate(transforms)], axis=0)
    return out


def doubtful(prob: Batch, threshold: float, margin: float) -> NDArray[np.intp]:
    """Indices of the images whose un-flipped probability lies within ``margin`` of the gate
    ``threshold`` (|p − t| < margin): the only ones whose gate decision the other TTA passes could change,
    as long as TTA moves a probability by less than the margin (what the margin is chosen for, on
    validation images: export/adaptive_tta.py)."""
    out: NDArray[np.intp] = np.flatnonzero(np.abs(prob.astype(np.float64) - threshold) < margin)
    return out
