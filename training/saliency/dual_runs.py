"""Held-out AUC of product dual-encoder runs (``triage train saliency --dual-encoder``), stage by stage.

For each run (one per seed), on a held-out synthetic set, P(pneumothorax) of:

* ``classifier``: stage 1, the classifier run the fused model was built on (its own head);
* ``unet_head``: stage 2, the saliency U-Net's own classification head (the fused checkpoint holds the
  stage-2 weights unchanged);
* ``fused``: stage 3, the fused head — what ``triage predict`` reports as ``saliency_probability``.

Reported: the runs' mean AUC per arm with a 95 % interval from class-stratified resamples of the test
images (the same resamples for every arm, so ``fused − classifier`` and ``fused − unet_head`` are paired),
the seeds' AUCs, and the drain confound on the same images: the AUC of the drain alone (metadata
``drain``) and each arm's AUC among the images without a drain.

With ``--control RUN ...`` (the same design trained without the map loss, ``--cls-weight 1``) also the
control's U-Net head and fused head, and the paired differences ``unet_head − control_unet_head`` (does
the map loss make the U-Net classify better: seed 001's claim, like for like) and ``fused −
control_fused`` (is the fused head's gain the reading heatmap's).

``python -m training.saliency.dual_runs --runs RUN [RUN ...] --test DIR --out OUT [--control RUN ...]
[--cache DIR]``
(writes ``models.csv``, ``predictions.npz``, ``results.json``, ``results.md``).
"""

from __future__ import annotations

import argparse
import csv
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.config import read_config
from training.data import model_spec
from training.fusion import DualEncoderNet
from training.run_format import load_network, read_run_card
from training.saliency.corruption_arms import bootstrap_aucs, resamples
from training.saliency.unet_bench import load_test
from triage import metrics
from triage.cascade.preprocess import normalise
from triage.synth.dataset import read_metadata

ARMS = ("classifier", "unet_head", "fused")
CONTROL_ARMS = ("control_unet_head", "control_fused")
PAIRS = (
    ("fused", "classifier"),
    ("fused", "unet_head"),
    ("unet_head", "control_unet_head"),
    ("fused", "control_fused"),
)


@torch.no_grad()
def run_scores(run: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    """The three arms' probabilities (N,) for one dual-encoder run on letterboxed grids ``images``."""
    card = read_run_card(run)
    if "dual_encoder" not in card.provenance:
        raise ValueError(f"{run} is not a dual-encoder run (triage train saliency --dual-encoder)")
    fused = load_network(run, card)  # its saliency.* tensors are stage 2's best.safetensors
    assert isinstance(fused, DualEncoderNet)
    spec = model_spec(read_config(run / "config.yaml"))
    out: dict[str, list[np.ndarray]] = {k: [] for k in ARMS}
    for s in range(0, len(images), 32):
        x = torch.from_numpy(np.stack([normalise(im, spec) for im in images[s : s + 32]]))
        _, logit, own, unet_own = fused.forward_all(x)
        out["fused"].append(torch.sigmoid(logit[:, 0]).numpy())
        out["classifier"].append(torch.sigmoid(own[:, 0]).numpy())
        out["unet_head"].append(torch.sigmoid(unet_own[:, 0]).numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def _ci(values: np.ndarray) -> list[float]:
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def summarise(probs: dict[str, np.ndarray], y: np.ndarray, drain: np.ndarray, b: int) -> dict[str, Any]:
    """``probs[arm]`` (runs, N). Mean AUC per arm with intervals, paired differences, drain strata."""
    idx = resamples(y, b)
    boot = {k: bootstrap_aucs(v, y, idx).mean(axis=0) for k, v in probs.items()}
    out: dict[str, Any] = {}
    for k, v in boot.items():
        out[k] = {"mean": float(v[0]), "ci": _ci(v[1:]),
                  "seeds": [float(metrics.roc_auc(p, y > 0)) for p in probs[k]]}  # fmt: skip
    for a, b_ in PAIRS:
        if a in boot and b_ in boot:
            d = boot[a] - boot[b_]
            out[f"{a}-{b_}"] = {"mean": float(d[0]), "ci": _ci(d[1:])}
    free = ~drain
    out["drain_alone_auc"] = float(metrics.roc_auc(drain.astype(float), y > 0))
    out["drain_free"] = {
        "positives": int((y[free] > 0).sum()),
        "negatives": int((y[free] <= 0).sum()),
        **{k: float(np.mean([metrics.roc_auc(p[free], y[free] > 0) for p in v])) for k, v in probs.items()},
    }
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| arm | AUC, mean of runs [95 % CI] | per run | drain-free AUC |",
        "| --- | ---: | --- | ---: |",
    ]
    free = result["drain_free"]
    for k in (*ARMS, *CONTROL_ARMS):
        if k not in result:
            continue
        a = result[k]
        seeds = ", ".join(f"{s:.3f}" for s in a["seeds"])
        ci = f"[{a['ci'][0]:.3f}, {a['ci'][1]:.3f}]"
        lines.append(f"| {k} | {a['mean']:.3f} {ci} | {seeds} | {free[k]:.3f} |")
    for k in (f"{a}-{b}" for a, b in PAIRS):
        if k not in result:
            continue
        a = result[k]
        lines.append(f"| {k} (paired) | {a['mean']:+.3f} [{a['ci'][0]:+.3f}, {a['ci'][1]:+.3f}] | | |")
    lines.append(
        f"\nDrain alone: AUC {result['drain_alone_auc']:.3f}; drain-free images: "
        f"{free['positives']} positive, {free['negatives']} negative."
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m training.saliency.dual_runs", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--runs", type=Path, nargs="+", required=True, help="dual-encoder saliency runs")
    ap.add_argument("--test", type=Path, required=True, help="a triage synth folder (held out)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument(
        "--control",
        type=Path,
        nargs="*",
        default=[],
        help="dual-encoder runs of the same design trained without the map loss (--cls-weight 1): their "
        "U-Net head and fused head become control_unet_head and control_fused, with paired differences",
    )
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--bootstrap", type=int, default=1000)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    card = read_run_card(args.runs[0])
    test = load_test(args.test, tuple(card.input_size), card.resize, args.cache)  # type: ignore[arg-type]
    y = test["label"]
    drains = {r["image_id"]: r["drain"] == "1" for r in read_metadata(args.test)}
    drain = np.array([drains[i] for i in test["ids"]], bool)
    rows: list[dict[str, Any]] = []
    probs: dict[str, list[np.ndarray]] = {}
    jobs: list[tuple[Path, tuple[str, ...], str]] = [(run, ARMS, "") for run in args.runs]
    jobs += [(run, ("unet_head", "fused"), "control_") for run in args.control]
    for run, arms, prefix in jobs:
        scores = run_scores(run, test["image"])
        row: dict[str, Any] = {"run": str(run), **({"control": 1} if prefix else {})}
        for k in arms:
            probs.setdefault(prefix + k, []).append(scores[k])
            row[f"auc_{k}"] = round(float(metrics.roc_auc(scores[k], y > 0)), 4)
        rows.append(row)
        print(json.dumps(row), flush=True)
    stacked = {k: np.stack(v) for k, v in probs.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = summarise(stacked, y, drain, args.bootstrap)
    result["runs"] = [str(r) for r in args.runs]
    result["control_runs"] = [str(r) for r in args.control]
    result["test"] = {"folder": str(args.test), "images": len(y), "positives": int((y > 0).sum())}
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "models.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
    np.savez_compressed(args.out / "predictions.npz", label=y, drain=drain, **stacked)
    (args.out / "results.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (args.out / "results.md").write_text(markdown(result) + "\n", encoding="utf-8")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
