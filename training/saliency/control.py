"""The positive control and the drain experiment: does the heatmap loss keep a classifier off a planted
confounder, under a protocol that could show it? (issue 17; seeds.md B, experiment 2.)

``python -m training.saliency.control --experiment marker|drain --out DIR`` (resumable: finished models
are kept in ``DIR/models.csv`` and skipped).

Data (the phantom, ``triage synth`` at ``synth_size`` px, read on a ``input_size`` grid):

* ``marker`` (the positive control): the corner marker of :class:`triage.synth.config.PhantomConfig` in
  90 % of training positives and 10 % of training negatives, no drains; the test set has the marker in 50 %
  of each class (decorrelated). The marker lies entirely outside the lungs: the penalised region ("outside
  the lung fields") contains it.
* ``drain``: chest drains in 90 % / 10 % (training) and 50 % / 50 % (test). Two heatmap arms: ``lungs``
  (outside the lungs penalised — the first experiment's region, which does *not* contain the intra-pulmonary
  half of a drain) and ``lungs-drain`` (outside the lungs **or** on the drain, dilated by one grid pixel,
  penalised: the region contains the confounder).

Validation: a third set from the *training* distribution. A model is kept only if its validation accuracy
reaches ``min_val_acc`` (the source kept models above 95 % on an easy task; the threshold is part of the
setup, fixed before the run).

Models: :func:`training.saliency.protocol.small_cam_net` (CAM grid = input/stride, ≥ 8×8), Adam, BCE,
``warmup_epochs`` of cross-entropy only, then λ ramped over ``ramp_epochs`` — the heatmap loss of
:mod:`training.saliency.heatmap_loss` with the ``fraction`` reduction (training objective = the reported
mass) or ``sum`` (the source's). Arms: ``ce`` and one per (region, λ), ``seeds`` models each, seed k the
same initialisation and batch order in every arm.

Endpoints, stated before the run (per model, on the decorrelated test set):

1. mass on the confounder — HiResCAM of the predicted class, Σ Ĥ·R / Σ Ĥ on the CAM grid, over test
   images with the confounder;
2. mass inside the lungs — the same map, over all test images;
3. decorrelated AUC.

Secondary: AUC on the pairs a confounder detector gets wrong (positives without the confounder vs
negatives with it) and the audit of the source's caveat — the same masses by a second method: Grad-CAM
on an earlier layer (twice the grid) and occlusion. Each heatmap arm is compared with ``ce`` by a
two-sided Mann–Whitney U test with CLES, rank-biserial r and Cohen's d
(:func:`triage.saliency_metrics.compare_groups`);
every mass is printed beside its chance (a uniform map) and ceiling (the best map at that resolution).
No correction for multiple comparisons is applied; the tables say how many there are.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from training.saliency.control_report import append_row, compare, markdown, read_rows
from training.saliency.eval import class_maps
from training.saliency.heatmap_loss import HeatmapLoss, HeatmapLossConfig
from training.saliency.protocol import (
    FitSettings,
    Tensors,
    accuracy,
    auc,
    chance_and_ceiling,
    confounder_present,
    fit_classifier,
    maps,
    probabilities,
    region_mass,
    scheduled,
    shortcut_auc,
    small_cam_net,
)
from triage.cascade.preprocess import fit
from triage.data.dataset import list_dataset
from triage.data.gridcache import GridSpec, ensure_grids
from triage.synth.config import PhantomConfig
from triage.synth.dataset import SynthRequest, read_metadata, synthesize

EXPERIMENTS = ("marker", "drain")
EASY = {
    "ptx_lucency": 0.35,
    "pleural_line_contrast": 0.4,
    "collapse_density": 0.2,
    "size_weights": (0.0, 0.3, 0.7),
}
"""``--phantom easy``: a pneumothorax a small network can see at 64 px (no small cases, 4x the pleural line
and lucency) — the source's task was easy (models kept above 95 % validation accuracy)."""
MEDIUM: dict[str, Any] = {
    "ptx_lucency": 0.135,
    "pleural_line_contrast": 0.15,
    "collapse_density": 0.09,
    "size_weights": (0.0, 0.3, 0.7),
}
"""``--phantom medium``: 1.5x the shipped pneumothorax contrasts, no small cases — chosen by
:mod:`training.saliency.medium_pilot` on its own data seed (900) as the hardest candidate whose
cross-entropy models learn the disease (AUC ≥ 0.75) and still use the marker (hard-pair AUC ≥ 0.15 lower):
the positive control's setting where removing the shortcut can leave a working classifier."""
PHANTOM_SETTINGS: dict[str, dict[str, Any]] = {"default": {}, "medium": MEDIUM, "easy": EASY}
"""``--phantom``: PhantomConfig fields changed from the shipped phantom's defaults."""
PHANTOMS = tuple(PHANTOM_SETTINGS)


@dataclass(frozen=True)
class ControlSetup:
    out: Path
    experiment: str = "marker"
    phantom: str = "default"
    seeds: int = 10
    lambdas: tuple[float, ...] = (0.3, 1.0, 3.0, 10.0)
    reduction: str = "fraction"
    train_studies: int = 400
    val_studies: int = 100
    test_studies: int = 300
    synth_size: int = 128
    input_size: int = 64
    stride: int = 8
    width: int = 16
    epochs: int = 10
    warmup_epochs: int = 2
    ramp_epochs: int = 2
    lr: float = 3e-3
    batch_size: int = 32
    min_val_acc: float = 0.75
    occlusion_images: int = 40
    data_seed: int = 300
    cache: Path | None = None
    arms: tuple[str, ...] = field(default=())
    report_only: bool = False

    def __post_init__(self) -> None:
        if self.experiment not in EXPERIMENTS:
            raise ValueError(f"--experiment must be one of {EXPERIMENTS}, got {self.experiment!r}")
        if self.phantom not in PHANTOM_SETTINGS:
            raise ValueError(f"--phantom must be one of {tuple(PHANTOM_SETTINGS)}, got {self.phantom!r}")
        if self.seeds < 1:
            raise ValueError(f"--seeds must be at least 1, got {self.seeds}")
        if not self.lambdas or any(not (0 < lam < math.inf) for lam in self.lambdas):
            raise ValueError(f"--lambdas must be finite numbers > 0, got {self.lambdas}")
        if self.input_size // self.stride < 8:
            raise ValueError(
                f"the CAM grid would be {self.input_size // self.stride}x{self.input_size // self.stride}; "
                "the protocol needs >= 8x8: raise --input-size or lower --stride"
            )

    @property
    def regions(self) -> tuple[str, ...]:
        return ("lungs",) if self.experiment == "marker" else ("lungs", "lungs-drain")

    def arm_names(self) -> list[str]:
        names = ["ce"] + [f"{r}@{lam:g}" for r in self.regions for lam in self.lambdas]
        return [a for a in names if not self.arms or a in self.arms]

    def settings(self, seed: int) -> FitSettings:
        return FitSettings(self.epochs, self.lr, self.batch_size, self.warmup_epochs, self.ramp_epochs, seed)

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def phantom_configs(experiment: str, phantom: str = "default") -> dict[str, PhantomConfig]:
    """train / val (the training distribution) and test (decorrelated) phantom settings."""
    base = PhantomConfig(**PHANTOM_SETTINGS[phantom])
    if experiment == "marker":
        biased = replace(
            base,
            corner_marker_given_positive=0.9,
            corner_marker_given_negative=0.1,
            drain_given_positive=0.0,
            drain_given_negative=0.0,
        )
        fair = replace(biased, corner_marker_given_positive=0.5, corner_marker_given_negative=0.5)
    else:
        biased = replace(base, drain_given_positive=0.9, drain_given_negative=0.1)
        fair = replace(biased, drain_given_positive=0.5, drain_given_negative=0.5)
    return {"train": biased, "val": biased, "test": fair}


def build_sets(setup: ControlSetup) -> dict[str, Tensors]:
    """Synthesize (once) and load the three sets on the model grid: images normalised by the training
    set's mean / SD; regions ``lungs`` (0/1 coverage), ``confounder`` (the marker, or the drain dilated
    by one pixel; NaN where absent) and ``lungs-drain`` (lungs minus the dilated drain)."""
    configs = phantom_configs(setup.experiment, setup.phantom)
    studies = {"train": setup.train_studies, "val": setup.val_studies, "test": setup.test_studies}
    raw: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
    for k, name in enumerate(("train", "val", "test")):
        root = setup.out / "data" / name
        if not (root / "metadata.csv").is_file():
            synthesize(
                SynthRequest(root, studies[name], 0.5, setup.synth_size, setup.data_seed + k, configs[name]),
                force=True,
            )
        raw[name] = _load_grid(root, setup)
    mean, sd = float(raw["train"][0].mean()), float(raw["train"][0].std()) or 1.0
    out = {}
    for name, (images, labels, lungs, confounder) in raw.items():
        present = ~np.isnan(confounder).all(axis=(1, 2))
        drain_free = np.where(present[:, None, None], np.nan_to_num(confounder, nan=0.0), 0.0)
        regions = {
            "lungs": torch.from_numpy(lungs[:, None]),
            "confounder": torch.from_numpy(confounder[:, None]),
            "lungs-drain": torch.from_numpy((lungs * (1.0 - drain_free))[:, None].astype(np.float32)),
        }
        x = torch.from_numpy(((images - mean) / sd)[:, None].astype(np.float32))
        out[name] = Tensors(x, torch.from_numpy(labels.astype(np.float32)), regions)
    return out


def _load_grid(root: Path, setup: ControlSetup) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    listing = list_dataset(root)
    grid = ensure_grids(listing, [GridSpec((setup.input_size, setup.input_size))], setup.cache)[0]
    if grid.lungs is None:
        raise ValueError(f"{root} has no lung masks (lungs/<id>.png); the experiment needs them")
    rows = grid.usable
    key = "corner_marker_mask" if setup.experiment == "marker" else "drain_mask"
    paths = {r["image_id"]: r.get(key, "") for r in read_metadata(root)}
    confounder = np.full((len(rows), setup.input_size, setup.input_size), np.nan, np.float32)
    for k, r in enumerate(rows):
        rel = paths.get(grid.ids[r], "")
        if rel:
            with Image.open(root / rel) as img:
                src = np.asarray(img) > 0
            cover, _ = fit(src.astype(np.float32), grid.grid.size, grid.grid.resize)
            confounder[k] = ndimage.binary_dilation(cover > 0, structure=np.ones((3, 3), bool))
    images = np.stack([grid.image(r) for r in rows]).astype(np.float32)
    lungs = np.stack([np.asarray(grid.lungs[r]) > 0 for r in rows]).astype(np.float32)
    return images, grid.labels[rows].astype(np.int64), lungs, confounder


def _arm(arm: str) -> tuple[str | None, float]:
    if arm == "ce":
        return None, 0.0
    region, lam = arm.split("@")
    return region, float(lam)


def train_and_score(setup: ControlSetup, sets: dict[str, Tensors], arm: str, seed: int) -> dict[str, Any]:
    """One model of ``arm`` with ``seed``: its validation filter, endpoints, audits and training curve."""
    torch.manual_seed(seed)
    region, lam = _arm(arm)
    train = sets["train"]
    settings = setup.settings(seed)
    model = small_cam_net(1, setup.width, setup.stride, seed)
    loss: HeatmapLoss | None = None
    if region is not None:
        warmup, ramp = scheduled(settings, len(train))
        config = HeatmapLossConfig(
            weight=lam,
            region="custom",
            reduction=setup.reduction,  # type: ignore[arg-type]
            warmup_steps=warmup,
            ramp_steps=ramp,
            min_grid=8,
        )
        loss = HeatmapLoss(config)
    t0 = time.perf_counter()
    history = fit_classifier(model, train, loss, settings, region_key=region or "lungs")
    row: dict[str, Any] = {"arm": arm, "region": region or "", "lambda": lam, "seed": seed}
    row["train_s"] = round(time.perf_counter() - t0, 1)
    row["val_acc"] = accuracy(model, sets["val"])
    row["val_auc"] = auc(model, sets["val"])
    row["kept"] = int(row["val_acc"] >= setup.min_val_acc)
    row["term_first"] = history[0]["term"] if loss else None
    row["term_last"] = history[-1]["term"] if loss else None
    row["term_curve"] = " ".join(f"{h['term']:.3f}" for h in history) if loss else ""
    row["bce_last"] = history[-1]["bce"]
    row.update(score(model, sets["test"], setup))
    return row


def score(model: torch.nn.Module, test: Tensors, setup: ControlSetup) -> dict[str, Any]:
    present = confounder_present(test)
    y = test.label.numpy() > 0
    p = probabilities(model, test.image)
    out: dict[str, Any] = {"auc": auc(model, test), "auc_hard_pairs": shortcut_auc(p, y, present)}
    main = maps(model, test.image)
    out["dead"] = float((main.flatten(1).sum(dim=1) <= 0).float().mean())
    out.update(_masses("", main, test, present))
    early = _early_layer(model)
    out.update(_masses("gradcam_early/", maps(model, test.image, "gradcam", layer=early), test, present))
    rows = _occlusion_rows(present, y, setup.occlusion_images)
    occ = class_maps(model, test.image[rows], "occlusion", "predicted", (8, 4))
    sub = test.subset(rows)
    out.update(_masses("occlusion/", _normalise(occ), sub, present[rows]))
    return out


def _masses(prefix: str, norm: torch.Tensor, data: Tensors, present: np.ndarray) -> dict[str, float | None]:
    conf = region_mass(norm, data.regions["confounder"])[present]
    lungs = region_mass(norm, data.regions["lungs"])
    return {f"{prefix}mass_confounder": _nanmean(conf), f"{prefix}mass_lungs": _nanmean(lungs)}


def _nanmean(values: np.ndarray) -> float | None:
    return float(np.nanmean(values)) if np.isfinite(values).any() else None


def _normalise(maps_: torch.Tensor) -> torch.Tensor:
    peak = maps_.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
    return maps_ / (peak + 1e-8)


def _early_layer(model: torch.nn.Module) -> str:
    """The backbone's output one stride-2 stage before the last (twice the CAM grid): ``backbone.<k>``."""
    relus = [n for n, m in model.named_modules() if isinstance(m, torch.nn.ReLU)]
    return relus[-3]


def _occlusion_rows(present: np.ndarray, y: np.ndarray, n: int) -> list[int]:
    """The first n test rows with the confounder, alternating positive and negative."""
    pos = [i for i in range(len(y)) if present[i] and y[i]]
    neg = [i for i in range(len(y)) if present[i] and not y[i]]
    rows: list[int] = []
    for a, b in zip(pos, neg, strict=False):
        rows += [a, b]
    return sorted(rows[:n])


def reference_levels(setup: ControlSetup, test: Tensors) -> dict[str, dict[str, float]]:
    """Chance and ceiling of each mass on the CAM grid and on the audit grid (occlusion maps are at
    input resolution: their chance / ceiling are those of the pixel grid)."""
    present = confounder_present(test)
    g = setup.input_size // setup.stride
    conf = test.regions["confounder"][torch.as_tensor(present)]
    levels = {}
    for name, grid in (("cam", (g, g)), ("gradcam_early", (2 * g, 2 * g))):
        levels[f"{name}/confounder"] = chance_and_ceiling(conf, grid)
        levels[f"{name}/lungs"] = chance_and_ceiling(test.regions["lungs"], grid)
    s = setup.input_size
    levels["occlusion/confounder"] = chance_and_ceiling(conf, (s, s))
    levels["occlusion/lungs"] = chance_and_ceiling(test.regions["lungs"], (s, s))
    return levels


def run(setup: ControlSetup, on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    setup.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    sets = build_sets(setup)
    models = setup.out / "models.csv"
    done = {(r["arm"], int(r["seed"])) for r in read_rows(models)}
    arms = setup.arm_names()
    for seed in range(0 if setup.report_only else setup.seeds):
        for arm in arms:
            if (arm, seed) in done:
                continue
            if on_step:
                on_step(f"{arm} seed {seed}")
            append_row(models, train_and_score(setup, sets, arm, seed))
    rows = [r for r in read_rows(models) if r["arm"] in arms and int(r["seed"]) < setup.seeds]
    for r in rows:  # the filter is applied at report time: --min-val-acc 0 reports every model
        r["kept"] = "1" if float(r["val_acc"]) >= setup.min_val_acc else "0"
    result = {
        "setup": setup.to_dict(),
        "sets": {k: {"images": len(v), "positives": int(v.label.sum()),
                     "with_confounder": int(confounder_present(v).sum())} for k, v in sets.items()},
        "reference": reference_levels(setup, sets["test"]),
        "kept": {a: sum(1 for r in rows if r["arm"] == a and r["kept"] == "1") for a in arms},
        "comparison": compare(rows, arms),
        "wall_s_this_call": round(time.perf_counter() - t0, 1),
    }  # fmt: skip
    (setup.out / "results.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (setup.out / "results.md").write_text(markdown(result) + "\n", encoding="utf-8")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    doc = (__doc__ or "").split("\n")[0]
    ap = argparse.ArgumentParser(prog="python -m training.saliency.control", description=doc)
    ap.add_argument("--experiment", choices=EXPERIMENTS, default="marker")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument(
        "--phantom",
        choices=PHANTOMS,
        default="default",
        help="default: the shipped phantom; medium: a pneumothorax the small network learns "
        "partly; easy: one it learns perfectly",
    )
    ap.add_argument("--data-seed", type=int, default=300, help="the synthetic sets' seeds: S, S+1, S+2")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--lambdas", type=float, nargs="+", default=[0.3, 1.0, 3.0, 10.0])
    ap.add_argument("--reduction", choices=("fraction", "sum", "mean"), default="fraction")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--train-studies", type=int, default=400)
    ap.add_argument("--test-studies", type=int, default=300)
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--min-val-acc", type=float, default=0.75)
    ap.add_argument("--arms", nargs="*", default=[], help="only these arms (e.g. ce lungs@1)")
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--report-only", action="store_true", help="tables from DIR/models.csv, no training")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    setup = ControlSetup(
        out=args.out,
        experiment=args.experiment,
        phantom=args.phantom,
        seeds=args.seeds,
        lambdas=tuple(args.lambdas),
        reduction=args.reduction,
        epochs=args.epochs,
        train_studies=args.train_studies,
        test_studies=args.test_studies,
        input_size=args.input_size,
        min_val_acc=args.min_val_acc,
        arms=tuple(args.arms),
        cache=args.cache,
        report_only=args.report_only,
        data_seed=args.data_seed,
    )
    result = run(setup, on_step=lambda s: print(f"[{time.strftime('%H:%M:%S')}] {s}", flush=True))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
