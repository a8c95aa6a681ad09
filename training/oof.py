"""Out-of-fold (OOF) predictions: what a fold's model says about the images it did not train on.

Written into ``RUN/oof/`` of each fold run, self-contained (the threshold search and the experiment
table need neither the data set nor the models):

    classifier.csv        image_id, label, probability (no TTA), probability_tta   (classifier runs)
    index.csv             image_id, label                                          (segmenter/baseline)
    seg.npy, seg_tta.npy  (N, H, W) float16 pixel probabilities on the segmenter's grid, without / with TTA
    truth.npy             (N, H, W) uint8 ground truth on the same grid
    done.json             written last: the files above are complete

Maps are written batch by batch into memory-mapped files and read back memory-mapped, so no step holds
all maps in memory. A segmenter's OOF covers every held-out image, negatives included (the cascade's
threshold search needs the maps of images the gate may wrongly pass).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from training.data import GridDataset, loader, plain_batches
from training.tasks import Task, predict
from triage.bundle import ModelSpec
from triage.data.gridcache import GridSet

OOF = "oof"
DONE = "done.json"


def _per_transform(
    model: nn.Module,
    task: Task,
    ds: GridDataset,
    rows: Sequence[int],
    device: torch.device,
    tta: tuple[str, ...],
    batch_size: int,
) -> tuple[list[NDArray[np.float32]], list[NDArray[np.float32]]]:
    """Per batch: (prediction without TTA, mean over ``tta``), computing each transform once."""
    transforms = tuple(dict.fromkeys(("none", *tta)))
    plain: list[NDArray[np.float32]] = []
    merged: list[NDArray[np.float32]] = []
    for batch in plain_batches(list(rows), batch_size):
        preds = {}
        for t in transforms:
            [(_, p)] = list(predict(model, task, loader(ds, [batch], 0), device, (t,)))
            preds[t] = p
        plain.append(preds["none"])
        merged.append(np.mean([preds[t] for t in tta], axis=0).astype(np.float32))
    return plain, merged


def write_oof(
    run: Path,
    model: nn.Module,
    task: Task,
    grids: GridSet,
    rows: Sequence[int],
    spec: ModelSpec,
    tta: tuple[str, ...],
    device: torch.device,
    batch_size: int = 16,
) -> Path:
    out = run / OOF
    out.mkdir(parents=True, exist_ok=True)
    (out / DONE).unlink(missing_ok=True)
    ds = GridDataset(grids, spec, augment=None, maps=("mask",))
    plain, merged = _per_transform(model, task, ds, rows, device, tta, batch_size)
    ids = [grids.ids[r] for r in rows]
    labels = [int(grids.labels[r]) for r in rows]
    if task.role == "classifier":
        p, q = np.concatenate(plain), np.concatenate(merged)
        with (out / "classifier.csv").open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["image_id", "label", "probability", "probability_tta"])
            for i, image_id in enumerate(ids):
                w.writerow([image_id, labels[i], f"{p[i]:.6f}", f"{q[i]:.6f}"])
    else:
        shape = (len(rows), *grids.grid.size)
        seg = np.lib.format.open_memmap(out / "seg.npy", "w+", np.float16, shape)
        seg_tta = np.lib.format.open_memmap(out / "seg_tta.npy", "w+", np.float16, shape)
        truth = np.lib.format.open_memmap(out / "truth.npy", "w+", np.uint8, shape)
        i = 0
        for a, b in zip(plain, merged, strict=True):
            seg[i : i + len(a)] = a
            seg_tta[i : i + len(a)] = b
            i += len(a)
        for j, r in enumerate(rows):
            truth[j] = grids.masks[r]
        for arr in (seg, seg_tta, truth):
            arr.flush()
        with (out / "index.csv").open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["image_id", "label"])
            w.writerows(zip(ids, labels, strict=True))
    meta = {"role": task.role, "images": len(rows), "tta": list(tta), "grid": list(grids.grid.size)}
    (out / DONE).write_text(json.dumps(meta) + "\n", encoding="utf-8")
    return out


def oof_done(run: Path) -> bool:
    return (run / OOF / DONE).is_file()


@dataclass(frozen=True)
class ClassifierOOF:
    ids: list[str]
    labels: NDArray[np.int64]
    probability: NDArray[np.float64]
    probability_tta: NDArray[np.float64]


@dataclass(frozen=True)
class SegmenterOOF:
    ids: list[str]
    labels: NDArray[np.int64]
    seg: NDArray[np.float16]  # memory-mapped (N, H, W)
    seg_tta: NDArray[np.float16]
    truth: NDArray[np.uint8]


def _require(run: Path) -> Path:
    if not oof_done(run):
        raise ValueError(f"{run}: no complete out-of-fold predictions ({OOF}/{DONE}); train it with --fold K")
    return run / OOF


def read_classifier_oof(run: Path) -> ClassifierOOF:
    out = _require(run)
    with (out / "classifier.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return ClassifierOOF(
        [r["image_id"] for r in rows],
        np.array([int(r["label"]) for r in rows], np.int64),
        np.array([float(r["probability"]) for r in rows]),
        np.array([float(r["probability_tta"]) for r in rows]),
    )


def read_segmenter_oof(run: Path) -> SegmenterOOF:
    out = _require(run)
    with (out / "index.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return SegmenterOOF(
        [r["image_id"] for r in rows],
        np.array([int(r["label"]) for r in rows], np.int64),
        np.load(out / "seg.npy", mmap_mode="r"),
        np.load(out / "seg_tta.npy", mmap_mode="r"),
        np.load(out / "truth.npy", mmap_mode="r"),
    )
