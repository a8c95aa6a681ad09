"""Threshold search: the gate and the triplet (top, min_area, bottom, min_component) that maximise the
cascade's mean Dice per image on held-out predictions.

The cascade's mask for image i with gate probability q_i and pixel probabilities p_i (the runtime's
:func:`triage.cascade.postprocess.triplet_mask`): empty if q_i < gate; else empty if fewer than
``min_area`` pixels have p > ``top``; else p > ``bottom`` without 8-connected components smaller than
``min_component`` pixels. Dice per image is 1 when prediction and truth are both empty.

The search is exhaustive over a grid but cheap: per image, one connected-component labelling per
``bottom`` value gives the Dice of every (top, min_area, bottom, min_component) combination; the gate is
then a masked mean over images. Maps are visited one at a time (memory-mapped arrays are fine), so
memory stays at one map plus an (images × combinations) table of floats.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

_EIGHT = np.ones((3, 3), bool)
DEFAULT_GATES = tuple(round(0.02 * i, 2) for i in range(1, 50))
DEFAULT_TOPS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9)
DEFAULT_BOTTOMS = (0.2, 0.3, 0.4, 0.5, 0.6)
# min_area and min_component as fractions of the grid's area (0.002 of 1024² ≈ the SIIM winners' 2000 px)
AREA_FRACTIONS = (0.0, 0.0002, 0.0005, 0.001, 0.002, 0.004)
COMPONENT_FRACTIONS = (0.0, 0.0001, 0.0003, 0.001)
SINGLE_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))


@dataclass(frozen=True)
class SearchGrid:
    """Candidate values; ``min_area`` and ``min_component`` in pixels of the segmenter's grid."""

    gate: tuple[float, ...]
    top: tuple[float, ...]
    min_area: tuple[int, ...]
    bottom: tuple[float, ...]
    min_component: tuple[int, ...]

    @classmethod
    def triplet(cls, grid: tuple[int, int], gate: tuple[float, ...] = DEFAULT_GATES) -> SearchGrid:
        """The default search: gate × top × min_area × bottom × min_component."""
        area = grid[0] * grid[1]
        return cls(
            gate=gate,
            top=DEFAULT_TOPS,
            min_area=tuple(sorted({round(f * area) for f in AREA_FRACTIONS})),
            bottom=DEFAULT_BOTTOMS,
            min_component=tuple(sorted({round(f * area) for f in COMPONENT_FRACTIONS})),
        )

    @classmethod
    def single(cls, gate: tuple[float, ...] = DEFAULT_GATES) -> SearchGrid:
        """One pixel threshold (mask = p > t, nothing removed), with the gate: the thesis's "threshold"."""
        return cls(gate=gate, top=(0.5,), min_area=(0,), bottom=SINGLE_THRESHOLDS, min_component=(0,))

    @classmethod
    def fixed(cls, gate: float, top: float, min_area: int, bottom: float, min_component: int) -> SearchGrid:
        return cls((gate,), (top,), (min_area,), (bottom,), (min_component,))

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        return (len(self.gate), len(self.top), len(self.min_area), len(self.bottom), len(self.min_component))

    def thresholds(self, index: tuple[int, ...]) -> dict[str, Any]:
        g, t, a, b, c = index
        values = {
            "gate": float(self.gate[g]),
            "top": float(self.top[t]),
            "min_area": int(self.min_area[a]),
            "bottom": float(self.bottom[b]),
            "min_component": int(self.min_component[c]),
        }
        if values["min_area"] == 0:  # top plays no part; show the one threshold that does
            values["top"] = values["bottom"]
        return values


def image_dice_table(prob: NDArray[Any], truth: NDArray[np.bool_], grid: SearchGrid) -> NDArray[np.float32]:
    """Dice of one image for every (top, min_area, bottom, min_component): shape grid.shape[1:]."""
    p = np.asarray(prob, dtype=np.float32)
    t_sum = int(truth.sum())
    empty_score = 1.0 if t_sum == 0 else 0.0
    counts = np.array([int((p > t).sum()) for t in grid.top])
    comps = np.array(grid.min_component)
    dice_bc = np.empty((len(grid.bottom), len(comps)), np.float32)
    for bi, b in enumerate(grid.bottom):
        mask = p > b
        if not mask.any():
            dice_bc[bi] = empty_score
            continue
        labels, n = ndimage.label(mask, structure=_EIGHT)
        sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        inter = np.bincount(labels.ravel(), weights=truth.ravel().astype(np.float64), minlength=n + 1)[1:]
        keep = sizes[None, :] >= comps[:, None]  # (n_comp, n)
        area = (keep * sizes[None, :]).sum(axis=1)
        hit = (keep * inter[None, :]).sum(axis=1)
        denom = area + t_sum
        dice_bc[bi] = np.where(denom == 0, 1.0, 2.0 * hit / np.maximum(denom, 1))
    empty = counts[:, None] < np.array(grid.min_area)[None, :]  # (n_top, n_area)
    return np.where(empty[:, :, None, None], np.float32(empty_score), dice_bc[None, None, :, :]).astype(
        np.float32
    )


@dataclass(frozen=True)
class SearchResult:
    thresholds: dict[str, Any]
    value: float  # mean Dice per image at the chosen thresholds
    surface: NDArray[np.float32]  # mean Dice per image over the whole grid, shape grid.shape
    grid: SearchGrid
    images: int
    extra: dict[str, Any] = field(default_factory=dict)


def dice_tables(
    maps: Sequence[NDArray[Any]], truths: Sequence[NDArray[Any]], grid: SearchGrid
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """(D, E): D (N, K) Dice per image for the K = prod(grid.shape[1:]) combinations when the image is
    gated, E (N,) its Dice when it is not (1 if its truth is empty, else 0)."""
    n = len(maps)
    k = int(np.prod(grid.shape[1:]))
    d = np.empty((n, k), np.float32)
    e = np.empty(n, np.float32)
    for i in range(n):
        truth = np.asarray(truths[i]) > 0
        d[i] = image_dice_table(maps[i], truth, grid).reshape(-1)
        e[i] = 0.0 if truth.any() else 1.0
    return d, e


def surface(
    gate_probs: NDArray[Any], d: NDArray[np.float32], e: NDArray[np.float32], grid: SearchGrid
) -> NDArray[np.float32]:
    """Mean Dice per image for every grid point, from :func:`dice_tables`' D and E."""
    q = np.asarray(gate_probs, dtype=np.float64)
    rows = []
    for g in grid.gate:
        passed = q >= g
        rows.append((d[passed].sum(axis=0) + e[~passed].sum()) / max(1, len(q)))
    return np.asarray(rows, np.float32).reshape(grid.shape)


def best_of(values: NDArray[np.float32], grid: SearchGrid, images: int) -> SearchResult:
    """The first maximum in grid order (lower values first)."""
    index = np.unravel_index(int(np.argmax(values)), values.shape)
    return SearchResult(
        grid.thresholds(tuple(int(i) for i in index)), float(values[index]), values, grid, images
    )


def search(
    gate_probs: NDArray[Any] | None,
    maps: Sequence[NDArray[Any]],
    truths: Sequence[NDArray[Any]],
    grid: SearchGrid,
) -> SearchResult:
    """Search ``grid`` on N images; ``gate_probs`` None means no gate (every image is segmented)."""
    if len(maps) == 0:
        raise ValueError("the threshold search needs at least one image")
    if gate_probs is None:
        gate_probs = np.ones(len(maps))
        grid = SearchGrid((0.0,), grid.top, grid.min_area, grid.bottom, grid.min_component)
    d, e = dice_tables(maps, truths, grid)
    return best_of(surface(gate_probs, d, e, grid), grid, len(maps))
