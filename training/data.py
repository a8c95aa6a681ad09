"""Batches for training and prediction, read from the grid cache (:mod:`triage.data.gridcache`).

Each sample: the cached grid image → augmentation (:mod:`training.augment`) → the runtime's own
:func:`triage.cascade.preprocess.normalise` with the run's input contract → tensors. A batch is a dict:

    image    (N, C, H, W) float32, normalised         label   (N, 1) float32 (1 = pneumothorax)
    mask     (N, 1, H, W) float32 0/1                   row     (N,) int64 (row in the grid cache)
    lungs    (N, 1, H, W) float32 0/1 + has_lungs (N,) bool      when the data set has lung masks
    heatmap  (N, 1, H, W) float32 [0, 1] + has_heatmap (N,) bool when the data set has heatmaps

The order of an epoch is a function of (seed, epoch) — a permutation, or with ``balance: sampler`` a draw
with replacement in which positives make ``positive_fraction`` of the samples — and each sample's
augmentation a function of (seed, epoch, position), so a run resumed mid-epoch sees the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from training.augment import Pipeline, Sample, build_pipeline
from training.config import AugmentConfig, TrainConfig
from triage.bundle import ModelSpec, Normalization
from triage.cascade.preprocess import normalise
from triage.data.gridcache import GridSet

Key = tuple[int, int]  # (row in the grid cache, position in the epoch)


def model_spec(config: TrainConfig, path: Path | None = None) -> ModelSpec:
    """The runtime's view of a run's input contract (only the input fields matter here)."""
    norm = config.normalization
    return ModelSpec(
        role="classifier" if config.role == "classifier" else "segmenter",
        path=path or Path("."),
        runtime="onnx",
        sha256="",
        input_name="image",
        input_size=config.input_size,
        channels=config.arch.in_chans,
        resize=config.resize,  # type: ignore[arg-type]
        normalization=Normalization(norm["kind"], tuple(norm.get("mean", ())), tuple(norm.get("std", ()))),
        outputs={},
    )


class GridDataset(Dataset[dict[str, torch.Tensor]]):
    """Samples of a grid cache, indexed by ``(row, position)`` keys (see :class:`EpochBatches`)."""

    def __init__(
        self,
        grids: GridSet,
        spec: ModelSpec,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        maps: Sequence[str] = ("mask", "lungs", "heatmap"),
    ) -> None:
        self.grids = grids
        self.spec = spec
        self.augment = augment
        self.seed = seed
        self.maps = [m for m in maps if m == "mask" or getattr(grids, _ARRAYS[m]) is not None]
        self.epoch = 0
        self.pipeline: Pipeline = Pipeline([])
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.pipeline = build_pipeline(self.augment, epoch) if self.augment is not None else Pipeline([])

    def __len__(self) -> int:
        return len(self.grids)

    def sample(self, row: int) -> Sample:
        g = self.grids
        out: Sample = {"image": g.image(row)}
        for name in self.maps:
            arr = getattr(g, _ARRAYS[name])[row]
            out[name] = arr.astype(np.float32) / (np.float32(255) if name == "heatmap" else np.float32(1))
        return out

    def __getitem__(self, key: Key | int) -> dict[str, torch.Tensor]:
        row, position = (key, 0) if isinstance(key, (int, np.integer)) else key
        sample = self.sample(int(row))
        if self.pipeline.transforms:
            rng = np.random.default_rng([self.seed, self.epoch, int(position), int(row)])
            sample = self.pipeline(sample, rng)
        image = np.clip(sample["image"], 0.0, 1.0)
        item = {
            "image": torch.from_numpy(normalise(image, self.spec)),
            "label": torch.tensor([float(self.grids.labels[row])]),
            "row": torch.tensor(int(row)),
        }
        for name in self.maps:
            item[name] = torch.from_numpy(np.ascontiguousarray(sample[name]))[None]
            if name != "mask":
                flag = self.grids.items[row]["has_lungs" if name == "lungs" else "has_heatmap"]
                item[f"has_{name}"] = torch.tensor(bool(flag))
        return item


_ARRAYS = {"mask": "masks", "lungs": "lungs", "heatmap": "heatmaps"}


def epoch_order(
    rows: Sequence[int], labels: np.ndarray, seed: int, epoch: int, positive_fraction: float | None
) -> list[int]:
    """The rows of one epoch, in order: a permutation, or (``positive_fraction``) a weighted draw."""
    rng = np.random.default_rng([seed, 7, epoch])
    rows_arr = np.asarray(rows)
    if positive_fraction is None:
        return [int(r) for r in rng.permutation(rows_arr)]
    pos = labels[rows_arr] > 0
    n_pos = int(pos.sum())
    if n_pos == 0 or n_pos == len(rows_arr):
        return [int(r) for r in rng.permutation(rows_arr)]
    weights = np.where(pos, positive_fraction / n_pos, (1 - positive_fraction) / (len(rows_arr) - n_pos))
    return [int(r) for r in rng.choice(rows_arr, size=len(rows_arr), replace=True, p=weights)]


class EpochBatches(Sampler[list[Key]]):
    """Batches of ``(row, position)`` keys of one epoch, from batch ``start`` on (resume mid-epoch).

    A trailing batch smaller than ``min_last`` (default 2) is dropped (BatchNorm cannot train on one
    sample; with N processes each needs a share of every batch)."""

    def __init__(self, order: list[int], batch_size: int, start: int = 0, min_last: int = 2) -> None:
        keys = [(row, pos) for pos, row in enumerate(order)]
        self.batches = [keys[i : i + batch_size] for i in range(0, len(keys), batch_size)]
        if len(self.batches) > 1 and len(self.batches[-1]) < min_last:
            self.batches.pop()
        self.start = start

    def __iter__(self) -> Iterator[list[Key]]:
        return iter(self.batches[self.start :])

    def __len__(self) -> int:
        return max(0, len(self.batches) - self.start)


class EpochSampler(Sampler[list[Key]]):
    """The training batches of the current epoch for one process (fastai's Learner iterates it).

    :meth:`set_epoch` draws the epoch's order (:func:`epoch_order`) and where to start (resume mid-epoch).
    With ``world`` processes, every global batch of ``batch_size`` keys is split into ``world`` interleaved
    shares and process ``rank`` gets share ``rank``: each sample is seen once per epoch across the
    processes, with the same global batch as one process. ``len`` is the whole epoch's number of batches,
    so the one-cycle schedule's position stays right when an epoch resumes part-way."""

    def __init__(
        self,
        rows: Sequence[int],
        labels: np.ndarray,
        batch_size: int,
        seed: int,
        positive_fraction: float | None,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.rows, self.labels, self.batch_size, self.seed = list(rows), labels, batch_size, seed
        self.positive_fraction, self.rank, self.world = positive_fraction, rank, world
        self.batches: list[list[Key]] = []
        self.start = 0
        self.set_epoch(0)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        order = epoch_order(self.rows, self.labels, self.seed, epoch, self.positive_fraction)
        self.batches = EpochBatches(order, self.batch_size, min_last=max(2, 2 * self.world)).batches
        self.start = start

    def __iter__(self) -> Iterator[list[Key]]:
        for batch in self.batches[self.start :]:
            yield batch[self.rank :: self.world]

    def __len__(self) -> int:
        return len(self.batches)


def loader(dataset: GridDataset, batches: Sampler[list[Key]] | list[list[int]], workers: int) -> DataLoader:  # type: ignore[type-arg]
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
    )


def plain_batches(rows: Sequence[int], batch_size: int) -> list[list[int]]:
    """Rows in order, in batches (prediction and validation)."""
    return [list(rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)]


class _Loader(DataLoader):  # type: ignore[type-arg]
    """A torch DataLoader of ``(batch, batch)`` pairs (fastai's ``xb``, ``yb``) that fastai can "move"."""

    def to(self, device: Any) -> _Loader:
        return self


def _pair(items: list[dict[str, torch.Tensor]]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    from torch.utils.data import default_collate

    batch: dict[str, torch.Tensor] = default_collate(items)
    return batch, batch


def fastai_loader(dataset: GridDataset, batches: Any, workers: int) -> _Loader:
    """A loader of ``batches`` (index lists) that fastai's Learner takes as it is."""
    return _Loader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        collate_fn=_pair,
    )
