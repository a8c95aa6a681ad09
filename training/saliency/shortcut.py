"""The shortcut experiment: does the heatmap loss keep a classifier off the chest drain?

``triage shortcut-experiment --out DIR`` (resumable; run it again to continue):

1. Synthesizes (if absent) ``DIR/data/train``: a chest drain in 90 % of positive and 2 % of negative
   studies — "tube ⇒ pneumothorax" is a shortcut — and ``DIR/data/test``: a drain in 50 % of studies
   whatever the label, so the shortcut no longer pays.
2. Trains ``--models`` classifiers per group with the ``small`` preset and cross-entropy (``loss: bce``),
   seeds 0..n−1, on all training images (``--fold full``, last weights): group ``ce`` without and group
   ``heatmap`` with the heatmap loss (``--heatmap-loss hirescam --heatmap-weight λ``, outside the lungs).
3. Scores every model on the test set: AUC; where the positive-class HiResCAM (= the CAM the runtime
   shows, without the head's bias) puts its mass — inside the lung fields, on the drain — and the same for
   the audit maps (Grad-CAM on ``backbone.layer3``, and occlusion — 16-px patches set to the mean grey, on a
   16-px stride — on a subset of test images with a drain).
4. Compares the groups per model (mean over test images) with a two-sided Mann–Whitney U test and writes
   ``DIR/results.json`` and ``DIR/results.md``.

Region definitions on the model grid (128 px in ``small``): lungs = the cached lung mask (coverage ≥ ½);
drain = every grid pixel the drain touches, dilated by one pixel (a 3–4 px band: the CAM cannot resolve
a 1–2 px tube).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image
from safetensors.torch import load_file
from scipy import ndimage

from training.config import TrainConfig, resolve
from training.models import CamClassifier, build_model
from training.run import RunRequest, train
from training.run_format import CARD, read_run_card
from training.saliency.eval import class_maps, score_maps, upsample
from training.saliency.protocol import shortcut_auc
from triage import metrics
from triage.bundle import Normalization
from triage.cascade.preprocess import fit, normalise
from triage.data.dataset import list_dataset
from triage.data.gridcache import GridSet, GridSpec, ensure_grids
from triage.saliency_metrics import compare_groups
from triage.synth.config import PhantomConfig
from triage.synth.dataset import SynthRequest, read_metadata, synthesize

logger = logging.getLogger(__name__)

GROUPS = ("ce", "heatmap")
OCCLUSION = (16, 16)  # patch, stride (px on the 128-px grid): 64 occluded copies per image
# key -> (attribution method, class explained); see training.saliency.eval
METHODS = {
    "hirescam": ("hirescam", "predicted"),
    "hirescam_positive": ("hirescam", "positive"),
    "gradcam_layer3": ("gradcam:backbone.layer3", "predicted"),
    "occlusion": ("occlusion", "predicted"),
}


@dataclass(frozen=True)
class ShortcutSetup:
    out: Path
    models: int = 5
    preset: str = "small"
    heatmap_weight: float = 1.0
    heatmap_method: str = "hirescam"
    train_studies: int = 500
    test_studies: int = 400
    size: int = 256
    train_seed: int = 109  # realises 90.8 % / 2.0 % drains (positives / negatives) at 500 studies
    test_seed: int = 200
    occlusion_images: int = 40
    epochs: int | None = None
    overrides: tuple[str, ...] = ()
    cache: Path | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.models < 1:
            raise ValueError(f"--models must be at least 1, got {self.models}")
        if self.heatmap_weight <= 0:
            raise ValueError(f"--heatmap-weight must be > 0, got {self.heatmap_weight}")


def synthesize_sets(setup: ShortcutSetup) -> tuple[Path, Path]:
    """DIR/data/train (drain 90 % / 2 %) and DIR/data/test (drain 50 % / 50 %), made once."""
    sets = {
        "train": (setup.train_studies, setup.train_seed, 0.90, 0.02),
        "test": (setup.test_studies, setup.test_seed, 0.50, 0.50),
    }
    paths = []
    for name, (studies, seed, pos, neg) in sets.items():
        root = setup.out / "data" / name
        if not (root / "metadata.csv").is_file():
            config = PhantomConfig(drain_given_positive=pos, drain_given_negative=neg)
            synthesize(SynthRequest(root, studies, 0.5, setup.size, seed, config), force=True)
        paths.append(root)
    return paths[0], paths[1]


def group_config(setup: ShortcutSetup, group: str, seed: int) -> TrainConfig:
    """The ``small`` classifier with cross-entropy, the last weights, and for ``heatmap`` the heatmap loss."""
    extra: tuple[dict[str, Any], ...] = ()
    if group == "heatmap":
        extra = (
            {
                "name": "heatmap",
                "weight": setup.heatmap_weight,
                "method": setup.heatmap_method,
                "which": "predicted",
                "mode": "irrelevant",
                "region": "lungs",
            },
        )
    return resolve(
        "classifier",
        setup.preset,
        None,
        list(setup.overrides),
        loss="bce",
        seed=seed,
        epochs=setup.epochs,
        select="last",
        extra_losses=extra or None,
    )


def _drain_masks(test: Path, grid: GridSet) -> list[NDArray[np.bool_] | None]:
    """Each test row's drain on the model grid: touched pixels, dilated by one pixel; None without one."""
    paths = {r["image_id"]: r.get("drain_mask", "") for r in read_metadata(test)}
    out: list[NDArray[np.bool_] | None] = []
    for image_id in grid.ids:
        rel = paths.get(image_id, "")
        if not rel:
            out.append(None)
            continue
        with Image.open(test / rel) as img:
            src = np.asarray(img) > 0
        cover, _ = fit(src.astype(np.float32), grid.grid.size, grid.grid.resize)
        out.append(ndimage.binary_dilation(cover > 0, structure=np.ones((3, 3), bool)))
    return out


def _load(run: Path) -> tuple[CamClassifier, Normalization]:
    card = read_run_card(run)
    model = build_model(card.arch)
    assert isinstance(model, CamClassifier)
    model.load_state_dict(load_file(str(run / card.checkpoint)))
    norm = card.normalization
    return model.eval(), Normalization(norm["kind"], tuple(norm.get("mean", ())), tuple(norm.get("std", ())))


def score_run(
    run: Path,
    test_grid: GridSet,
    drains: list[NDArray[np.bool_] | None],
    occlusion_rows: list[int],
    batch: int = 32,
) -> dict[str, Any]:
    """AUC and the mean per-image map scores of one run on the test grid."""
    from training.config import read_config
    from training.data import model_spec

    model, _ = _load(run)
    spec = model_spec(read_config(run / "config.yaml"))
    rows = test_grid.usable
    probs: list[float] = []
    per_method: dict[str, list[dict[str, float]]] = {m: [] for m in METHODS}
    size = test_grid.grid.size
    torch.set_grad_enabled(True)
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        x = torch.from_numpy(np.stack([normalise(test_grid.image(r), spec) for r in chunk]))
        with torch.no_grad():
            probs.extend(torch.sigmoid(model(x)).reshape(-1).tolist())
        lungs = np.stack([np.asarray(test_grid.lungs[r]) > 0 for r in chunk])  # type: ignore[index]
        chunk_drains = [drains[r] for r in chunk]
        for key, (method, which) in METHODS.items():
            if method == "occlusion":
                keep = [k for k, r in enumerate(chunk) if r in occlusion_rows]
                if not keep:
                    continue
                maps = upsample(class_maps(model, x[keep], method, which, OCCLUSION), size)
                per_method[key] += score_maps(maps, lungs[keep], [chunk_drains[k] for k in keep])
            else:
                maps = upsample(class_maps(model, x, method, which), size)
                per_method[key] += score_maps(maps, lungs, chunk_drains)
    labels = test_grid.labels[rows] > 0
    summary: dict[str, Any] = {"run": str(run), "auc": metrics.roc_auc(np.asarray(probs), labels)}
    has_drain = np.array([drains[r] is not None for r in rows])
    hard = shortcut_auc(np.asarray(probs), labels, has_drain)
    summary["auc_drain_free_positives_vs_drain_negatives"] = hard
    for method, scored in per_method.items():
        for key in ("lung_mass", "drain_mass", "drain_area", "lung_diff"):
            values = np.array([s[key] for s in scored], dtype=np.float64)
            summary[f"{method}/{key}"] = float(np.nanmean(values)) if np.isfinite(values).any() else None
        summary[f"{method}/images"] = len(scored)
        summary[f"{method}/defined"] = int(np.isfinite([x["lung_mass"] for x in scored]).sum())
    return summary


def _occlusion_rows(grid: GridSet, drains: list[NDArray[np.bool_] | None], n: int) -> list[int]:
    """The first n usable test rows with a drain, alternating positive and negative."""
    pos = [r for r in grid.usable if drains[r] is not None and grid.labels[r]]
    neg = [r for r in grid.usable if drains[r] is not None and not grid.labels[r]]
    out: list[int] = []
    for a, b in zip(pos, neg, strict=False):
        out += [a, b]
    return sorted(out[:n])


def run_experiment(setup: ShortcutSetup, on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    setup.out.mkdir(parents=True, exist_ok=True)
    t0, c0 = time.perf_counter(), time.process_time()
    train_data, test_data = synthesize_sets(setup)
    runs: dict[str, list[Path]] = {g: [] for g in GROUPS}
    for seed in range(setup.models):
        for group in GROUPS:
            run = setup.out / "runs" / f"{group}-seed{seed}"
            if not (run / CARD).is_file() or (run / "state.pt").exists():
                if on_step:
                    on_step(f"training {group} seed {seed}")
                config = group_config(setup, group, seed)
                train(
                    config,
                    RunRequest(
                        train_data,
                        run,
                        fold="full",
                        resume=run.exists(),
                        cache_dir=setup.cache,
                        progress=setup.progress,
                    ),
                )
            runs[group].append(run)
    config = group_config(setup, "ce", 0)
    test_grid = ensure_grids(
        list_dataset(test_data), [GridSpec(config.input_size, config.resize)], setup.cache
    )[0]
    drains = _drain_masks(test_data, test_grid)
    occ = _occlusion_rows(test_grid, drains, setup.occlusion_images)
    scores: dict[str, list[dict[str, Any]]] = {g: [] for g in GROUPS}
    for group in GROUPS:
        for run in runs[group]:
            cached = run / "shortcut_scores.json"
            if cached.is_file():
                scores[group].append(json.loads(cached.read_text(encoding="utf-8")))
                continue
            if on_step:
                on_step(f"scoring {run.name}")
            s = score_run(run, test_grid, drains, occ)
            cached.write_text(json.dumps(s, indent=1) + "\n", encoding="utf-8")
            scores[group].append(s)
    skip = ("/images", "/defined", "drain_area")
    keys = [k for k in scores["ce"][0] if k != "run" and not k.endswith(skip)]
    comparison: dict[str, Any] = {}
    for key in keys:
        a = [s[key] for s in scores["heatmap"] if s.get(key) is not None]
        b = [s[key] for s in scores["ce"] if s.get(key) is not None]
        row: dict[str, Any] = {
            "heatmap_mean": float(np.mean(a)) if a else None,
            "heatmap_sd": float(np.std(a, ddof=1)) if len(a) > 1 else None,
            "ce_mean": float(np.mean(b)) if b else None,
            "ce_sd": float(np.std(b, ddof=1)) if len(b) > 1 else None,
        }
        if a and b:
            row.update(compare_groups(a, b).to_dict())
        comparison[key] = row
    result = {
        "setup": {k: str(v) if isinstance(v, Path) else v for k, v in setup.__dict__.items()},
        "test": {
            "images": len(test_grid.usable),
            "with_drain": int(sum(d is not None for d in drains)),
            "occlusion_images": len(occ),
        },
        "scores": scores,
        "comparison": comparison,
        "wall_s": round(time.perf_counter() - t0, 1),
        "cpu_s_this_process": round(time.process_time() - c0, 1),
    }
    (setup.out / "results.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (setup.out / "results.md").write_text(markdown(result) + "\n", encoding="utf-8")
    return result


def _cell(row: dict[str, Any], group: str) -> str:
    mean, sd = row.get(f"{group}_mean"), row.get(f"{group}_sd")
    if mean is None:
        return "–"
    return f"{mean:.3f} ± {sd:.3f}" if sd is not None else f"{mean:.3f}"


LABELS = {
    "auc": "AUC, decorrelated test set",
    "auc_drain_free_positives_vs_drain_negatives": "AUC, positives without drain vs negatives with drain",
    "hirescam/lung_mass": "HiResCAM (trained map: predicted class) mass inside the lungs",
    "hirescam/drain_mass": "HiResCAM (predicted class) mass on the drain",
    "hirescam/lung_diff": "HiResCAM (predicted class) Diff, inside − outside lungs",
    "hirescam_positive/lung_mass": "HiResCAM of the positive class (the shown CAM) mass inside the lungs",
    "hirescam_positive/drain_mass": "HiResCAM of the positive class mass on the drain",
    "gradcam_layer3/lung_mass": "audit: Grad-CAM on layer3 (predicted class) mass inside the lungs",
    "gradcam_layer3/drain_mass": "audit: Grad-CAM on layer3 mass on the drain",
    "occlusion/lung_mass": "audit: occlusion (predicted class) mass inside the lungs",
    "occlusion/drain_mass": "audit: occlusion mass on the drain",
}


def markdown(result: dict[str, Any]) -> str:
    comp = result["comparison"]
    n = result["setup"]["models"]
    lines = [
        f"| per model (mean over test images), {n} models per group | cross-entropy | heatmap loss | "
        "Mann–Whitney p | rank-biserial r (heatmap vs CE) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for key, label in LABELS.items():
        row = comp.get(key)
        if row is None:
            continue
        p = row.get("p_value")
        r = row.get("rank_biserial")
        lines.append(
            f"| {label} | {_cell(row, 'ce')} | {_cell(row, 'heatmap')} | "
            f"{'–' if p is None else f'{p:.3g}'} | {'–' if r is None else f'{r:+.2f}'} |"
        )
    ce = result["scores"]["ce"][0]
    test = result["test"]
    lines += [
        "",
        f"Test set: {test['images']} images, {test['with_drain']} with a drain; occlusion on "
        f"{test['occlusion_images']} of them. A uniform map would put "
        f"{ce.get('hirescam/drain_area', 0):.3f} of its mass on the drain band and the lung-area "
        "fraction inside the lungs. Maps with no positive value "
        "(no evidence for the class anywhere) are left out: defined maps per model, CE / heatmap: "
        + ", ".join(f"{k} {_defined(result, k)}" for k in METHODS)
        + ".",
    ]
    return "\n".join(lines)


def _defined(result: dict[str, Any], key: str) -> str:
    groups = []
    for group in GROUPS:
        values = [s.get(f"{key}/defined") for s in result["scores"][group]]
        images = [s.get(f"{key}/images") for s in result["scores"][group]]
        groups.append(
            f"{min(v for v in values if v is not None)}–{max(v for v in values if v is not None)}/{images[0]}"
        )
    return " / ".join(groups)
