"""Seed 004's dual-encoder saliency model, at the scale of this machine (issue 17, item 4; seeds.md D).

The source trains in three stages: (1) a classification encoder; (2) with it frozen, a saliency U-Net (its
own encoder and decoder) against the reading heatmap with KL; (3) with both frozen, the classification
encoder's features concatenated with the U-Net's last up-sampling layer feed a new classifier head. Its
claim: the fused model classifies better (AUC 0.925 in its setting). Here:

* stage 1: :func:`training.saliency.protocol.small_cam_net` (the ``plain`` classifier of
  :mod:`training.saliency.corruption_arms`: Adam 3e-3, BCE, ``epochs``);
* stage 2: :class:`MiniUNet` (three levels, width ``width``), KL(T̂ ‖ softmax(P)) to the reading heatmap
  (:func:`training.saliency.losses.map_loss`, ``kl``), Adam 3e-3, ``epochs``;
* stage 3: both frozen (weights and BatchNorm statistics); the classifier's last feature map, bilinearly
  up-sampled to the decoder's grid, concatenated with the decoder's last features → 1×1 conv (``hidden``)
  → ReLU → global average pool → linear (the product's :class:`training.fusion.FusionHead`, which
  ``triage train saliency --dual-encoder`` trains on the product's networks), BCE, Adam 3e-3, ``epochs``;
* control ``head_only``: the same head trained the same way on the classifier's features alone — a second
  head on frozen features can itself change the AUC; only the difference between ``dual`` and
  ``head_only`` is the saliency U-Net's contribution.

Measured per seed on the held-out set: AUC of ``classifier`` (stage 1), ``head_only`` and ``dual``, with
paired bootstrap intervals of ``dual − classifier`` and ``dual − head_only`` (stratified resamples of the
test images, the models' mean score per image); and the U-Net's map (softmax, ÷ max) against the
classifier's CAM and the centre-bias map on KL / CC / SIM and the lesion measures
(:func:`training.saliency.unet_bench.score`).

With ``--target lungs`` the U-Net learns the lung-field mask instead of the reading heatmap: the same
architecture, stages and head, but no supervision of where the lesion is — if ``dual`` still beats
``head_only`` by as much, the gain is the second network's capacity, not the reading heatmap.

``python -m training.saliency.dual_encoder --train DIR --test DIR --out OUT [--seeds 5] [--target lungs]
[--cache DIR]``
(writes ``models.csv``, ``results.json``, ``results.md``).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.fusion import FusionHead as Fusion
from training.models import CamClassifier
from training.saliency.corruption_arms import bootstrap_aucs, resamples
from training.saliency.losses import map_loss
from training.saliency.protocol import FitSettings, Tensors, fit_classifier, small_cam_net
from training.saliency.unet_bench import MEASURES, centre_bias, interval, load_test, score
from triage import metrics


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
    )  # fmt: skip


class MiniUNet(nn.Module):
    """A three-level U-Net: ``forward(x)`` → (map logits (N, 1, H, W), last decoder features (N, w, H, W))."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width
        self.width = w
        self.enc = nn.ModuleList([_block(1, w), _block(w, 2 * w), _block(2 * w, 4 * w)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(4 * w, 2 * w, 2, 2), nn.ConvTranspose2d(2 * w, w, 2, 2)])
        self.dec = nn.ModuleList([_block(4 * w, 2 * w), _block(2 * w, w)])
        self.out = nn.Conv2d(w, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skips = []
        for k, block in enumerate(self.enc):
            x = block(x if k == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for up, block in zip(self.up, self.dec, strict=True):
            x = block(torch.cat([up(x), skips.pop()], dim=1))
        return self.out(x), x


class FusionHead(nn.Module):
    """Stage 3: frozen classifier (and, unless ``unet`` is None, frozen U-Net) → the product's
    :class:`training.fusion.FusionHead` (1×1 conv over [up-sampled A ; D] → ReLU → GAP → linear). Only the
    head's own parameters train."""

    def __init__(self, classifier: CamClassifier, unet: MiniUNet | None, hidden: int = 32) -> None:
        super().__init__()
        self.classifier, self.unet = classifier, unet
        for frozen in (classifier, unet):
            if frozen is not None:
                frozen.eval()
                frozen.requires_grad_(False)
        self.fuse = Fusion(classifier.head.in_features, unet.width if unet is not None else 0, hidden)

    def train(self, mode: bool = True) -> FusionHead:
        super().train(mode)
        for frozen in (self.classifier, self.unet):  # BatchNorm statistics stay those of stages 1 and 2
            if frozen is not None:
                frozen.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            a = self.classifier.features(x)
            dec = self.unet(x)[1] if self.unet is not None else None
        out: torch.Tensor = self.fuse(a, dec)
        return out


def _fit(
    model: nn.Module, n: int, settings: FitSettings, batch_loss: Callable[[torch.Tensor], torch.Tensor]
) -> list[float]:
    """Adam over ``model``'s trainable parameters, shuffled batches of row indices (a last batch of one
    image is dropped: BatchNorm), ``batch_loss(rows)``; the mean loss per epoch."""
    g = torch.Generator().manual_seed(settings.seed)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=settings.lr)
    history = []
    for _ in range(settings.epochs):
        model.train()
        order, total, steps = torch.randperm(n, generator=g), 0.0, 0
        for s in range(0, n, settings.batch_size):
            idx = order[s : s + settings.batch_size]
            if len(idx) < 2:
                continue
            loss = batch_loss(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, steps = total + float(loss.detach()), steps + 1
        history.append(total / max(steps, 1))
    model.eval()
    return history


def fit_unet(
    unet: MiniUNet, images: torch.Tensor, targets: torch.Tensor, settings: FitSettings
) -> list[float]:
    """Stage 2: KL to the target; the mean loss per epoch."""
    return _fit(unet, len(images), settings, lambda idx: map_loss(unet(images[idx])[0], targets[idx], "kl"))


def fit_head(head: FusionHead, data: Tensors, settings: FitSettings) -> list[float]:
    """Stage 3: BCE over the head's own parameters only (the stages it reads are frozen)."""

    def bce(idx: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(head(data.image[idx])[:, 0], data.label[idx].float())

    return _fit(head, len(data), settings, bce)


@torch.no_grad()
def _probs(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> np.ndarray:
    return torch.cat([torch.sigmoid(model(x[s : s + 64])).reshape(-1) for s in range(0, len(x), 64)]).numpy()


@torch.no_grad()
def _unet_maps(unet: MiniUNet, x: torch.Tensor) -> np.ndarray:
    logits = torch.cat([unet(x[s : s + 64])[0] for s in range(0, len(x), 64)])[:, 0]
    density = torch.softmax(logits.flatten(1), dim=1).reshape(logits.shape)
    return (density / density.flatten(1).amax(dim=1).view(-1, 1, 1)).numpy()


@torch.no_grad()
def _cams(model: CamClassifier, x: torch.Tensor) -> np.ndarray:
    cams = []
    for s in range(0, len(x), 64):
        a = model.features(x[s : s + 64])
        cams.append(torch.relu(model.cam_from_features(a) - model.head.bias.view(1, -1, 1, 1))[:, 0])
    return torch.cat(cams).numpy()


@dataclass(frozen=True)
class DualSetup:
    train: Path
    test: Path
    out: Path
    seeds: int = 5
    input_size: int = 64
    width: int = 16
    stride: int = 8
    unet_width: int = 16
    hidden: int = 32
    epochs: int = 10
    lr: float = 3e-3
    batch_size: int = 32
    bootstrap: int = 1000
    cache: Path | None = None
    target: str = "heatmap"

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


TARGETS = ("heatmap", "lungs")


def _tensors(
    data: dict[str, np.ndarray], mean: float, sd: float, target_kind: str = "heatmap"
) -> tuple[Tensors, torch.Tensor]:
    """(images and labels, the U-Net's target): the reading heatmap, or with ``lungs`` the lung-field
    mask — a map of the same anatomy that carries nothing of the lesion (the control for location
    supervision)."""
    x = torch.from_numpy(((data["image"] - mean) / sd)[:, None].astype(np.float32))
    source = data["target"] if target_kind == "heatmap" else data["lungs"]
    target = torch.from_numpy(source[:, None].astype(np.float32))
    return Tensors(x, torch.from_numpy(data["label"].astype(np.float32))), target


def train_seed(setup: DualSetup, train: Tensors, target: torch.Tensor, seed: int) -> dict[str, Any]:
    """The three stages and the control head for one seed: the models and their training curves."""
    settings = FitSettings(setup.epochs, setup.lr, setup.batch_size, 0, 0, seed)
    t0 = time.perf_counter()
    classifier = small_cam_net(1, setup.width, setup.stride, seed)
    fit_classifier(classifier, train, None, settings)
    torch.manual_seed(seed)
    unet = MiniUNet(setup.unet_width)
    kl_curve = fit_unet(unet, train.image, target, settings)
    torch.manual_seed(seed)
    dual = FusionHead(classifier, unet, setup.hidden)
    dual_curve = fit_head(dual, train, settings)
    torch.manual_seed(seed)
    head_only = FusionHead(classifier, None, setup.hidden)
    head_curve = fit_head(head_only, train, settings)
    return {
        "classifier": classifier, "unet": unet, "dual": dual, "head_only": head_only,
        "curves": {"unet_kl": kl_curve, "dual_bce": dual_curve, "head_only_bce": head_curve},
        "train_s": round(time.perf_counter() - t0, 1),
    }  # fmt: skip


def run(setup: DualSetup, log: Callable[[str], None] = print) -> dict[str, Any]:
    setup.out.mkdir(parents=True, exist_ok=True)
    size = (setup.input_size, setup.input_size)
    raw_train = load_test(setup.train, size, "letterbox", setup.cache)
    raw_test = load_test(setup.test, size, "letterbox", setup.cache)
    mean, sd = float(raw_train["image"].mean()), float(raw_train["image"].std()) or 1.0
    train, target = _tensors(raw_train, mean, sd, setup.target)
    test, _ = _tensors(raw_test, mean, sd)
    y = raw_test["label"]
    probs: dict[str, list[np.ndarray]] = {"classifier": [], "head_only": [], "dual": []}
    maps: dict[str, list[dict[str, np.ndarray]]] = {"unet": [], "cam": [], "centre": []}
    rows = []
    for seed in range(setup.seeds):
        log(f"seed {seed}")
        m = train_seed(setup, train, target, seed)
        row: dict[str, Any] = {"seed": seed, "train_s": m["train_s"]}
        for name in probs:
            p = _probs(m[name], test.image)
            probs[name].append(p)
            row[f"auc_{name}"] = round(float(metrics.roc_auc(p, y > 0)), 4)
        for name, values in (
            ("unet", _unet_maps(m["unet"], test.image)),
            ("cam", _cams(m["classifier"], test.image)),
        ):
            per_image = score(values, raw_test)
            maps[name].append(per_image)
            row.update({f"{name}_{k}": round(float(np.nanmean(per_image[k])), 4) for k in MEASURES})
        row.update({f"curve_{k}": " ".join(f"{v:.4f}" for v in c) for k, c in m["curves"].items()})
        rows.append(row)
        log(json.dumps({k: v for k, v in row.items() if k.startswith("auc")}))
    maps["centre"].append(score(np.repeat(centre_bias(size)[None], len(y), axis=0), raw_test))
    result = {
        "setup": setup.to_dict(),
        "images": {"train": len(train), "test": len(test)},
        "auc": _auc_summary(probs, y, setup.bootstrap),
        "maps": _map_summary(maps, setup.bootstrap),
    }
    with (setup.out / "models.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    np.savez_compressed(setup.out / "predictions.npz", label=y, **{k: np.stack(v) for k, v in probs.items()})
    (setup.out / "results.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (setup.out / "results.md").write_text(markdown(result) + "\n", encoding="utf-8")
    return result


def _auc_summary(probs: dict[str, list[np.ndarray]], y: np.ndarray, b: int) -> dict[str, Any]:
    """Per arm: mean AUC over seeds (and the seeds' values) with a bootstrap interval of the mean;
    paired differences ``dual − classifier`` and ``dual − head_only`` on the same resamples."""
    idx = resamples(y, b)
    boot = {k: bootstrap_aucs(np.stack(v), y, idx).mean(axis=0) for k, v in probs.items()}  # (b + 1,)
    out: dict[str, Any] = {}
    for k, v in boot.items():
        out[k] = {
            "mean": float(v[0]),
            "ci": _ci(v[1:]),
            "seeds": [float(metrics.roc_auc(p, y > 0)) for p in probs[k]],
        }
    for other in ("classifier", "head_only"):
        d = boot["dual"] - boot[other]
        out[f"dual-{other}"] = {"mean": float(d[0]), "ci": _ci(d[1:])}
    return out


def _ci(values: np.ndarray) -> list[float]:
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def _map_summary(maps: dict[str, list[dict[str, np.ndarray]]], b: int) -> dict[str, Any]:
    n = len(maps["unet"][0]["kl"])
    idx = np.random.default_rng(0).integers(0, n, (b, n))
    with warnings.catch_warnings():  # a lesion measure on a negative image is NaN for every model
        warnings.simplefilter("ignore", RuntimeWarning)
        per_source = {k: {m: np.nanmean(np.stack([v[m] for v in models]), axis=0) for m in MEASURES}
                      for k, models in maps.items()}  # fmt: skip
    out: dict[str, Any] = {k: {m: interval(v[m], idx) for m in MEASURES} for k, v in per_source.items()}
    out["unet-cam"] = {m: interval(per_source["unet"][m] - per_source["cam"][m], idx) for m in MEASURES}
    out["unet-centre"] = {m: interval(per_source["unet"][m] - per_source["centre"][m], idx) for m in MEASURES}
    return out


def markdown(result: dict[str, Any]) -> str:
    a = result["auc"]
    lines = ["| model | AUC, mean of seeds [95 % CI] | seeds |", "| --- | ---: | --- |"]
    for k in ("classifier", "head_only", "dual"):
        seeds = ", ".join(f"{s:.3f}" for s in a[k]["seeds"])
        lines.append(f"| {k} | {a[k]['mean']:.3f} [{a[k]['ci'][0]:.3f}, {a[k]['ci'][1]:.3f}] | {seeds} |")
    for k in ("dual-classifier", "dual-head_only"):
        lines.append(f"| {k} (paired) | {a[k]['mean']:+.3f} [{a[k]['ci'][0]:+.3f}, {a[k]['ci'][1]:+.3f}] | |")
    lines += [
        "",
        "| measure | " + " | ".join(result["maps"]) + " |",
        "| --- |" + " ---: |" * len(result["maps"]),
    ]
    for m in MEASURES:
        cells = [f"{v[m][0]:.3f} [{v[m][1]:.3f}, {v[m][2]:.3f}]" for v in result["maps"].values()]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m training.saliency.dual_encoder", description=__doc__.split("\n")[0]
    )
    ap.add_argument(
        "--train", type=Path, required=True, help="a triage synth folder (with heatmaps/ and lungs/)"
    )
    ap.add_argument("--test", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument(
        "--target",
        choices=TARGETS,
        default="heatmap",
        help="the U-Net's target: the reading heatmaps, or the lung-field masks (no lesion: the control)",
    )
    args = ap.parse_args(argv)
    if args.seeds < 1 or args.epochs < 1:
        ap.error("--seeds and --epochs must be at least 1")
    torch.set_num_threads(1)
    setup = DualSetup(
        args.train,
        args.test,
        args.out,
        seeds=args.seeds,
        epochs=args.epochs,
        cache=args.cache,
        target=args.target,
    )
    result = run(setup, log=lambda s: print(f"[{time.strftime('%H:%M:%S')}] {s}", flush=True))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
