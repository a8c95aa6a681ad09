"""Corruption robustness with intervals (issue 17, item 5; seeds.md E): ``seeds`` classifiers per arm,
absolute AUC beside each drop, bootstrap intervals over the test images.

``python -m training.saliency.corruption_arms --train DIR --test DIR --out OUT`` (resumable: each finished
model's test probabilities are kept in ``OUT/preds/<arm>-<seed>.npy`` and skipped; its weights in
``OUT/models/``, for :mod:`training.saliency.unet_bench`'s CAM baseline).

Arms: ``plain`` (no corruption in training) and ``augment`` (each training image, each epoch, gets one
random corruption at a random severity with probability ``augment_p``: :func:`triage.corruptions.
random_corruption`, the ``--corruption-augment`` transform). Models: :func:`training.saliency.protocol.
small_cam_net` on the grid images (``input_size`` px, [0, 1], normalised by the training set's mean / SD),
Adam on BCE, the same seed → the same initialisation and batch order in both arms.

Evaluation: the clean test set and its 25 corrupted copies (5 corruptions × 5 severities of
:mod:`triage.corruptions`, applied in [0, 1] before normalisation, seeded per (corruption, severity,
image): every model sees the same corrupted images). Per arm and set: the mean over seeds of the AUC and
of **ΔAUC = AUC(clean) − AUC(corrupted)** (positive = worse), each with a 95 % percentile bootstrap
interval over test images (the same resampled images for every model and for clean and corrupted: a
paired interval of the seeds' mean), and the seeds' range.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata

from training.saliency.protocol import FitSettings, Tensors, fit_classifier, probabilities, small_cam_net
from triage.corruptions import CORRUPTIONS, SEVERITIES, corrupt, random_corruption
from triage.data.dataset import list_dataset
from triage.data.gridcache import GridSpec, ensure_grids

ARMS = ("plain", "augment")
SETS: tuple[tuple[str, int], ...] = (("clean", 0), *((c, s) for c in CORRUPTIONS for s in SEVERITIES))


@dataclass(frozen=True)
class CorruptionSetup:
    train: Path
    test: Path
    out: Path
    seeds: int = 3
    input_size: int = 64
    stride: int = 8
    width: int = 16
    epochs: int = 10
    lr: float = 3e-3
    batch_size: int = 32
    augment_p: float = 0.5
    bootstrap: int = 1000
    corruption_seed: int = 0
    cache: Path | None = None

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise ValueError(f"--seeds must be at least 1, got {self.seeds}")
        if not 0.0 < self.augment_p <= 1.0:
            raise ValueError(f"--augment-p must be in (0, 1], got {self.augment_p}")

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def load_grid(root: Path, size: int, cache: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, size, size) float32 in [0, 1], labels (N,) int) of a data set's usable rows."""
    grid = ensure_grids(list_dataset(root), [GridSpec((size, size))], cache)[0]
    rows = grid.usable
    return np.stack([grid.image(r) for r in rows]), grid.labels[rows].astype(np.int64)


def corrupted_set(images: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """The test images under one corruption (clean for ``name == "clean"``), seeded per image."""
    if name == "clean":
        return images
    index = CORRUPTIONS.index(name)
    out = [
        corrupt(img, name, severity, np.random.default_rng([seed, index, severity, k]))
        for k, img in enumerate(images)
    ]
    return np.stack(out)


class _Augment:
    """The per-batch corruption augmentation, in [0, 1] before normalisation (seeded)."""

    def __init__(self, raw: np.ndarray, mean: float, sd: float, p: float, seed: int) -> None:
        self.raw, self.mean, self.sd, self.p = raw, mean, sd, p
        self.rng = np.random.default_rng(seed)

    def __call__(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        imgs = [random_corruption(self.raw[int(i)], self.rng, self.p) for i in idx]
        return torch.from_numpy(((np.stack(imgs) - self.mean) / self.sd)[:, None].astype(np.float32))


def train_and_predict(
    setup: CorruptionSetup,
    arm: str,
    seed: int,
    train: tuple[np.ndarray, np.ndarray],
    test_sets: list[np.ndarray],
) -> np.ndarray:
    """One model; its probabilities (len(SETS), N_test)."""
    raw, labels = train
    mean, sd = float(raw.mean()), float(raw.std()) or 1.0
    data = Tensors(
        torch.from_numpy(((raw - mean) / sd)[:, None].astype(np.float32)), torch.from_numpy(labels)
    )
    model = small_cam_net(1, setup.width, setup.stride, seed)
    settings = FitSettings(setup.epochs, setup.lr, setup.batch_size, 0, 0, seed)
    transform = _Augment(raw, mean, sd, setup.augment_p, seed) if arm == "augment" else None
    fit_classifier(model, data, None, settings, transform=transform)
    saved = setup.out / "models" / f"{arm}-{seed}.pt"  # for unet_bench's CAM baseline
    saved.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), saved)
    info = {"width": setup.width, "stride": setup.stride, "mean": mean, "sd": sd}
    saved.with_suffix(".json").write_text(json.dumps(info) + "\n", encoding="utf-8")
    out = []
    for images in test_sets:
        x = torch.from_numpy(((images - mean) / sd)[:, None].astype(np.float32))
        out.append(probabilities(model, x))
    return np.stack(out)


def bootstrap_aucs(p: np.ndarray, y: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """AUC of scores ``p`` (..., N) on each resample ``idx`` (B, N) → (..., B), by the rank formula."""
    s = p[..., idx]  # (..., B, N)
    yy = y[idx].astype(bool)  # (B, N)
    ranks = rankdata(s, axis=-1)
    n_pos = yy.sum(axis=-1)
    n_neg = yy.shape[-1] - n_pos
    r_pos = (ranks * yy).sum(axis=-1)
    out: np.ndarray = (r_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return out


def resamples(y: np.ndarray, b: int, seed: int = 0) -> np.ndarray:
    """(b + 1, N) image indices: row 0 the set itself, then b resamples stratified by class (both
    classes keep their counts, so every resample has an AUC)."""
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y > 0), np.flatnonzero(y <= 0)
    rows = [np.arange(len(y))]
    rows += [np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]) for _ in range(b)]
    return np.stack(rows)


def summarise(preds: dict[str, list[np.ndarray]], y: np.ndarray, b: int) -> list[dict[str, Any]]:
    """Per arm and set: seeds' mean AUC and ΔAUC with bootstrap intervals, and the seeds' range."""
    idx = resamples(y, b)
    table = []
    for arm, models in preds.items():
        if not models:
            continue
        aucs = np.stack([bootstrap_aucs(m, y, idx) for m in models])  # (seeds, sets, B + 1)
        mean = aucs.mean(axis=0)  # (sets, B + 1)
        delta = mean[:1] - mean
        per_seed_delta = aucs[:, :1, 0] - aucs[:, :, 0]
        for k, (name, severity) in enumerate(SETS):
            table.append({
                "arm": arm, "corruption": name, "severity": severity, "models": len(models),
                "auc": float(mean[k, 0]),
                "auc_lo": float(np.percentile(mean[k, 1:], 2.5)),
                "auc_hi": float(np.percentile(mean[k, 1:], 97.5)),
                "delta_auc": float(delta[k, 0]),
                "delta_lo": float(np.percentile(delta[k, 1:], 2.5)),
                "delta_hi": float(np.percentile(delta[k, 1:], 97.5)),
                "delta_seed_min": float(per_seed_delta[:, k].min()),
                "delta_seed_max": float(per_seed_delta[:, k].max()),
            })  # fmt: skip
    return table


def markdown(table: list[dict[str, Any]]) -> str:
    lines = []
    for arm in ARMS:
        rows = [r for r in table if r["arm"] == arm]
        if not rows:
            continue
        clean = rows[0]
        lines += [
            f"**{arm}** ({clean['models']} models; clean AUC {clean['auc']:.3f} "
            f"[{clean['auc_lo']:.3f}, {clean['auc_hi']:.3f}]). "
            "Cell: AUC / ΔAUC [95 % interval] (seeds' range)",
            "",
            "| corruption | " + " | ".join(f"severity {s}" for s in SEVERITIES) + " |",
            "| --- |" + " ---: |" * len(SEVERITIES),
        ]
        for c in CORRUPTIONS:
            cells = []
            for r in rows:
                if r["corruption"] == c:
                    cells.append(
                        f"{r['auc']:.3f} / {r['delta_auc']:+.3f} "
                        f"[{r['delta_lo']:+.3f}, {r['delta_hi']:+.3f}] "
                        f"({r['delta_seed_min']:+.2f}…{r['delta_seed_max']:+.2f})"
                    )
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_models_csv(path: Path, preds: dict[str, list[np.ndarray]], y: np.ndarray) -> None:
    """One row per (arm, seed, set): the model's AUC — the raw per-model results."""
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["arm", "seed", "corruption", "severity", "auc"])
        for arm, models in preds.items():
            for seed, p in enumerate(models):
                aucs = bootstrap_aucs(p, y, np.arange(len(y))[None])[:, 0]
                for (name, severity), a in zip(SETS, aucs, strict=True):
                    w.writerow([arm, seed, name, severity, f"{a:.5f}"])


def run(setup: CorruptionSetup, log: Any = print) -> list[dict[str, Any]]:
    t0 = time.perf_counter()
    (setup.out / "preds").mkdir(parents=True, exist_ok=True)
    train = load_grid(setup.train, setup.input_size, setup.cache)
    test_images, y = load_grid(setup.test, setup.input_size, setup.cache)
    test_sets = [corrupted_set(test_images, n, s, setup.corruption_seed) for n, s in SETS]
    np.save(setup.out / "preds" / "labels.npy", y)
    preds: dict[str, list[np.ndarray]] = {arm: [] for arm in ARMS}
    for seed in range(setup.seeds):
        for arm in ARMS:
            path = setup.out / "preds" / f"{arm}-{seed}.npy"
            if not path.is_file():
                log(f"[{time.strftime('%H:%M:%S')}] {arm} seed {seed}")
                t = time.perf_counter()
                np.save(path, train_and_predict(setup, arm, seed, train, test_sets))
                log(f"  {time.perf_counter() - t:.0f} s")
            preds[arm].append(np.load(path))
    table = summarise(preds, y, setup.bootstrap)
    write_models_csv(setup.out / "models.csv", preds, y)
    result = {
        "setup": setup.to_dict(),
        "test_images": len(y),
        "test_positives": int(y.sum()),
        "train_images": len(train[1]),
        "table": table,
        "wall_s_this_call": round(time.perf_counter() - t0),
    }
    (setup.out / "results.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (setup.out / "results.md").write_text(markdown(table) + "\n", encoding="utf-8")
    return table


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m training.saliency.corruption_arms", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--train", type=Path, required=True)
    ap.add_argument("--test", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--cache", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    setup = CorruptionSetup(
        args.train, args.test, args.out, seeds=args.seeds, epochs=args.epochs,
        input_size=args.input_size, bootstrap=args.bootstrap, cache=args.cache,
    )  # fmt: skip
    print(markdown(run(setup, log=lambda s: print(s, flush=True))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
