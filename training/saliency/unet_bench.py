"""The saliency U-Net, measured (issue 17, item 4; seeds.md C and D): its decoder's map against the
classifier's CAM and two prior maps, on a held-out set with reading heatmaps as the targets.

``python -m training.saliency.unet_bench --test DIR --unet RUN [RUN ...] [--no-map RUN ...]
[--classifiers DIR] [--train DIR] --out OUT``

Maps, per test image, on the U-Net's input grid (``input_size`` of the run card):

* ``unet``: the decoder's map, as exported (:class:`training.models.SaliencyForExport`: sigmoid after BCE
  or MSE training, exp(l − max l) after KL);
* ``unet_cam``: the CAM of the U-Net's own classification head (positive class, ReLU) — the map a
  classifier with that encoder shows;
* ``nomap_cam``: the head's CAM of the same U-Net trained without the map loss (``--no-map``: runs of
  ``triage train saliency --cls-weight 1``, map weight 0) — the like-for-like baseline of seed 001's
  claim, whose AUC is reported beside the U-Net's;
* ``cam``: the CAM (positive class, ReLU) of the separately trained classifiers of
  :mod:`training.saliency.corruption_arms` (``plain`` arm, ``--classifiers``: its ``models/`` folder);
* ``centre``: the centre-bias baseline, an isotropic Gaussian at the image centre with σ = ¼ of the side;
* ``mean_target``: the mean reading heatmap of the U-Net's *training* set (``--train``) — a fixed map
  that knows where readers look on average but nothing about the image.

Metrics (:mod:`triage.saliency_metrics`): KL (lower is better), CC and SIM against the reading heatmap
(every image); the pointing game, EHR-AUC and the mass on the pneumothorax (positives); the mass inside
the lungs. Per map source: the mean over models of the mean over images, with a 95 % percentile
bootstrap interval over test images; for ``unet`` minus each other source the paired difference and its
interval. The classification AUC of the U-Net's head and of the classifiers is reported beside it
(seed 001's claim concerns the AUC).
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from training.config import read_config
from training.data import model_spec
from training.models import SaliencyForExport, SaliencyNet, build_model
from training.run_format import read_run_card
from training.saliency.protocol import small_cam_net
from training.saliency.train import map_activation
from triage import metrics
from triage import saliency_metrics as sm
from triage.cascade.preprocess import normalise
from triage.data.dataset import list_dataset
from triage.data.gridcache import GridSpec, ensure_grids

HEATMAP_METRICS = ("kl", "cc", "sim")
LESION_METRICS = ("pointing", "ehr_auc", "mass_lesion")
MEASURES = (*HEATMAP_METRICS, *LESION_METRICS, "mass_lungs")
LOWER_IS_BETTER = {"kl"}


def load_test(root: Path, size: tuple[int, int], resize: str, cache: Path | None) -> dict[str, np.ndarray]:
    grid = ensure_grids(list_dataset(root), [GridSpec(size, resize)], cache)[0]  # type: ignore[arg-type]
    if grid.heatmaps is None or grid.lungs is None:
        raise ValueError(
            f"{root} has no reading heatmaps or lung masks (heatmaps/, lungs/): nothing to measure"
        )
    rows = grid.usable
    return {
        "image": np.stack([grid.image(r) for r in rows]),
        "label": grid.labels[rows].astype(np.int64),
        "lesion": np.stack([grid.mask(r) for r in rows]),
        "lungs": np.stack([np.asarray(grid.lungs[r]) > 0 for r in rows]),
        "target": np.stack([np.asarray(grid.heatmaps[r], np.float64) / 255.0 for r in rows]),
        "ids": np.array([grid.ids[r] for r in rows]),
    }


def centre_bias(size: tuple[int, int], sigma_fraction: float = 0.25) -> np.ndarray:
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    s = sigma_fraction * max(h, w)
    out: np.ndarray = np.exp(-(((yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2) / (2 * s**2)))
    return out


@torch.no_grad()
def unet_maps(run: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(decoder maps (N, H, W) in [0, 1], head CAMs (N, h, w) ReLU'd, probabilities (N,))."""
    card = read_run_card(run)
    config = read_config(run / "config.yaml")
    model = build_model(card.arch)
    if not isinstance(model, SaliencyNet):
        raise ValueError(f"{run} is not a saliency run (role {card.role})")
    model.load_state_dict(load_file(str(run / card.checkpoint)))
    model.eval()
    export = SaliencyForExport(model, map_activation(config))  # type: ignore[arg-type]
    spec = model_spec(config)
    decoder, cams, probs = [], [], []
    for s in range(0, len(images), 32):
        x = torch.from_numpy(np.stack([normalise(im, spec) for im in images[s : s + 32]]))
        m, logit = export(x)
        cam = model.forward_all(x)[2]
        decoder.append(m[:, 0].numpy())
        cams.append(torch.relu(cam - model.head_linear.bias.view(1, -1, 1, 1))[:, 0].numpy())
        probs.append(torch.sigmoid(logit[:, 0]).numpy())
    return np.concatenate(decoder), np.concatenate(cams), np.concatenate(probs)


@torch.no_grad()
def classifier_maps(path: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A ``corruption_arms`` classifier (``<arm>-<seed>.pt`` + its ``.json``): (CAMs (N, h, w), probs)."""
    info = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    model = small_cam_net(1, info["width"], info["stride"], 0)
    model.load_state_dict(torch.load(path, weights_only=True))
    model.eval()
    x = torch.from_numpy(((images - info["mean"]) / info["sd"])[:, None].astype(np.float32))
    a = model.features(x)
    cam = torch.relu(model.cam_from_features(a) - model.head.bias.view(1, -1, 1, 1))
    return cam[:, 0].numpy(), torch.sigmoid(model.logit_from_features(a)[:, 0]).numpy()


def score(maps: np.ndarray, test: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-image metrics of ``maps`` (N, h, w), resized to the test grid; NaN where undefined."""
    n = len(maps)
    out = {k: np.full(n, np.nan) for k in MEASURES}
    shape = test["target"].shape[1:]
    for i in range(n):
        h = sm.fit_map(np.asarray(maps[i], np.float64), shape)
        peak = float(h.max())
        if peak <= 0:
            continue
        h = h / peak
        out["kl"][i] = sm.kl_divergence(h, test["target"][i])
        out["cc"][i] = sm.pearson_cc(h, test["target"][i])
        out["sim"][i] = sm.similarity(h, test["target"][i])
        out["mass_lungs"][i] = sm.mass_inside(h, test["lungs"][i])
        if test["label"][i] > 0 and test["lesion"][i].any():
            out["pointing"][i] = sm.pointing_game(h, test["lesion"][i])
            out["ehr_auc"][i] = sm.ehr_auc(h, test["lesion"][i])
            out["mass_lesion"][i] = sm.mass_inside(h, test["lesion"][i])
    return out


def interval(per_image: np.ndarray, idx: np.ndarray) -> tuple[float, float, float]:
    """(mean, 2.5 %, 97.5 %) of the nan-mean over images, bootstrapped with the resamples ``idx``."""
    boot = np.nanmean(per_image[idx], axis=1)
    return (
        float(np.nanmean(per_image)),
        float(np.nanpercentile(boot, 2.5)),
        float(np.nanpercentile(boot, 97.5)),
    )


def summarise(sources: dict[str, list[dict[str, np.ndarray]]], b: int, seed: int = 0) -> dict[str, Any]:
    """Per source and measure: mean over models of the per-image values (then over images), with
    intervals; and ``unet`` − each other source, paired per image."""
    first = next(models[0] for models in sources.values() if models)
    n = len(first["kl"])
    idx = np.random.default_rng(seed).integers(0, n, (b, n))
    with warnings.catch_warnings():  # a lesion measure on a negative image is NaN for every model
        warnings.simplefilter("ignore", RuntimeWarning)
        per_source = {
            name: {k: np.nanmean(np.stack([m[k] for m in models]), axis=0) for k in MEASURES}
            for name, models in sources.items()
            if models
        }
    out: dict[str, Any] = {
        "models": {k: len(v) for k, v in sources.items()},
        "images": n,
        "means": {},
        "vs_unet": {},
    }
    for name, values in per_source.items():
        out["means"][name] = {k: interval(values[k], idx) for k in MEASURES}
    if "unet" in per_source:
        for name, values in per_source.items():
            if name != "unet":
                out["vs_unet"][name] = {k: interval(per_source["unet"][k] - values[k], idx) for k in MEASURES}
    return out


def markdown(summary: dict[str, Any], aucs: dict[str, list[float]]) -> str:
    names = list(summary["means"])
    lines = [
        "| measure | " + " | ".join(f"{n} ({summary['models'][n]})" for n in names) + " |",
        "| --- |" + " ---: |" * len(names),
    ]
    for k in MEASURES:
        cells = []
        for n in names:
            m, lo, hi = summary["means"][n][k]
            cells.append(f"{m:.3f} [{lo:.3f}, {hi:.3f}]")
        better = "lower" if k in LOWER_IS_BETTER else "higher"
        lines.append(f"| {k} ({better} is better) | " + " | ".join(cells) + " |")
    lines += ["", "| unet − other | " + " | ".join(summary["vs_unet"]) + " |",
              "| --- |" + " ---: |" * len(summary["vs_unet"])]  # fmt: skip
    for k in MEASURES:
        cells = [
            f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]" for m, lo, hi in (v[k] for v in summary["vs_unet"].values())
        ]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines += ["", "| classification AUC | models | mean | per model |", "| --- | ---: | ---: | --- |"]
    for name, values in aucs.items():
        if values:
            per = ", ".join(f"{v:.3f}" for v in values)
            lines.append(f"| {name} | {len(values)} | {np.mean(values):.3f} | {per} |")
    return "\n".join(lines)


def run(
    test_dir: Path, unets: Sequence[Path], classifiers: Path | None, train_dir: Path | None, out: Path,
    cache: Path | None, b: int = 1000, log: Callable[[str], None] = print, no_map: Sequence[Path] = (),
) -> dict[str, Any]:  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    card = read_run_card(unets[0])
    test = load_test(test_dir, tuple(card.input_size), card.resize, cache)  # type: ignore[arg-type]
    y = test["label"] > 0
    names = ("unet", "unet_cam", "nomap_cam", "cam", "centre", "mean_target")
    sources: dict[str, list[dict[str, np.ndarray]]] = {name: [] for name in names}
    aucs: dict[str, list[float]] = {"unet head": [], "unet head, no map loss": [], "classifier (plain)": []}
    rows = []
    for run_dir in unets:
        log(f"U-Net {run_dir}")
        decoder, cams, probs = unet_maps(run_dir, test["image"])
        sources["unet"].append(score(decoder, test))
        sources["unet_cam"].append(score(cams, test))
        aucs["unet head"].append(float(metrics.roc_auc(probs, y)))
        rows += _rows(run_dir.name, "unet", sources["unet"][-1])
        rows += _rows(run_dir.name, "unet_cam", sources["unet_cam"][-1])
    for run_dir in no_map:
        log(f"U-Net without the map loss {run_dir}")
        _, cams, probs = unet_maps(run_dir, test["image"])
        sources["nomap_cam"].append(score(cams, test))
        aucs["unet head, no map loss"].append(float(metrics.roc_auc(probs, y)))
        rows += _rows(run_dir.name, "nomap_cam", sources["nomap_cam"][-1])
    for path in sorted(classifiers.glob("plain-*.pt")) if classifiers else []:
        log(f"classifier {path}")
        cams, probs = classifier_maps(path, test["image"])
        sources["cam"].append(score(cams, test))
        aucs["classifier (plain)"].append(float(metrics.roc_auc(probs, y)))
        rows += _rows(path.stem, "cam", sources["cam"][-1])
    n = len(y)
    sources["centre"].append(score(np.repeat(centre_bias(test["target"].shape[1:])[None], n, axis=0), test))
    rows += _rows("centre", "centre", sources["centre"][-1])
    if train_dir is not None:
        mean_map = load_test(train_dir, tuple(card.input_size), card.resize, cache)["target"].mean(axis=0)  # type: ignore[arg-type]
        sources["mean_target"].append(score(np.repeat(mean_map[None], n, axis=0), test))
        rows += _rows("mean_target", "mean_target", sources["mean_target"][-1])
    summary = summarise(sources, b)
    result = {"test": str(test_dir), "unets": [str(u) for u in unets], "summary": summary, "aucs": aucs,
              "positives": int(y.sum())}  # fmt: skip
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (out / "results.md").write_text(markdown(summary, aucs) + "\n", encoding="utf-8")
    _write_per_model(out / "models.csv", rows)
    return result


def _rows(model: str, source: str, values: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """One row per model and source: the means over images (the raw per-model results)."""
    return [{"model": model, "source": source, **{k: float(np.nanmean(v)) for k, v in values.items()}}]


def _write_per_model(path: Path, rows: list[dict[str, Any]]) -> None:
    header = ["model", "source", *MEASURES]
    lines = [",".join(header)] + [
        ",".join(str(r[k]) if k in ("model", "source") else f"{r[k]:.5f}" for k in header) for r in rows
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m training.saliency.unet_bench", description=(__doc__ or "").split("\n")[0]
    )
    ap.add_argument("--test", type=Path, required=True)
    ap.add_argument(
        "--unet", type=Path, nargs="+", required=True, help="saliency runs (triage train saliency)"
    )
    ap.add_argument("--no-map", type=Path, nargs="*", default=[], help="runs trained with --cls-weight 1")
    ap.add_argument("--classifiers", type=Path, default=None, help="corruption_arms OUT/models")
    ap.add_argument("--train", type=Path, default=None, help="the U-Net's training set (for mean_target)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--cache", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    result = run(
        args.test, args.unet, args.classifiers, args.train, args.out, args.cache, args.bootstrap,
        no_map=args.no_map,
    )  # fmt: skip
    print(markdown(result["summary"], result["aucs"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
