"""``triage experiment``: the thesis's Table 5.1 on your data — the one-case cascade against the baseline
U-Net, with argmax / threshold / TTA post-processing, 5-fold mean ± std — plus what each stage
contributes (classifier AUC, oracle-gated U-Net) and, with ``--test``, a held-out evaluation per stratum.

Steps (each resumable; run the command again to continue after an interruption):

1. cross-validate the classifier, the positive-only segmenter and the baseline (``--fold all``) into
   ``OUT/classifier``, ``OUT/segmenter``, ``OUT/baseline``;
2. choose thresholds on all out-of-fold predictions and write them into the run cards (what export reads);
3. the table: for each fold k, thresholds are chosen on the *other* folds' out-of-fold predictions and
   applied to fold k (nested, so no fold is scored with thresholds tuned on itself); mean ± std over folds;
4. with ``--test``: ``triage evaluate`` of each fold's cascade (classifier + segmenter runs) and baseline
   on the test set; per-stratum AUC and Dice per image, mean ± std over the fold models.
"""

from __future__ import annotations

import json
import logging
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.config import TrainConfig, resolve
from training.heldout import test_reports
from training.run import RunRequest, fold_runs, train
from training.thresholds import CascadeOOF, choose, load_oof, write_thresholds
from triage.bundle import Thresholds
from triage.cascade.postprocess import triplet_mask
from triage.evaluation.search import SearchGrid, search

logger = logging.getLogger(__name__)
ROWS = ("argmax", "threshold", "TTA + argmax", "TTA", "TTA + triplet")
NO_GATE = "none"
ROLES = ("classifier", "segmenter", "baseline")  # the cascade's stages and the baseline (not saliency)


def configs(preset: str, overrides: list[str]) -> dict[str, TrainConfig]:
    """Per-role configs; ``ROLE.KEY=VALUE`` applies to one role, ``KEY=VALUE`` to all."""
    out = {}
    for role in ROLES:
        mine = []
        for pair in overrides:
            head, _, rest = pair.partition(".")
            if head in ROLES:
                if head == role:
                    mine.append(rest)
            else:
                mine.append(pair)
        out[role] = resolve(role, preset, overrides=mine)
    return out


@dataclass(frozen=True)
class Scores:
    dice_per_image: float
    dice: float
    iou: float


def _score(oof: CascadeOOF, gate: np.ndarray, th: Thresholds, tta: bool) -> Scores:
    maps = oof.seg_tta if tta else oof.seg
    n = len(oof.ids)
    inter, pred, truth = np.zeros(n), np.zeros(n), np.zeros(n)
    for i in range(n):
        t = np.asarray(oof.truth[i]) > 0
        truth[i] = t.sum()
        if gate[i]:
            m = triplet_mask(np.asarray(maps[i], np.float32), th)
            pred[i], inter[i] = m.sum(), (m & t).sum()
    denom = pred + truth
    dpi = np.where(denom == 0, 1.0, 2 * inter / np.maximum(denom, 1))
    pooled = 2 * inter.sum() / max(1.0, denom.sum()) if denom.sum() else 1.0
    union = denom.sum() - inter.sum()
    return Scores(float(dpi.mean()), float(pooled), float(inter.sum() / union) if union else 1.0)


def _thresholds(values: dict[str, Any]) -> Thresholds:
    return Thresholds(
        float(values["gate"]),
        float(values["top"]),
        int(values["min_area"]),
        float(values["bottom"]),
        int(values["min_component"]),
    )


ARGMAX = {"gate": 0.5, "top": 0.5, "min_area": 0, "bottom": 0.5, "min_component": 0}


def _row_thresholds(row: str, fit: CascadeOOF, gate_kind: str) -> dict[str, Any]:
    """Thresholds for ``row`` chosen on ``fit`` (other folds); gate_kind: model | none | oracle."""
    if row in ("argmax", "TTA + argmax"):
        return dict(ARGMAX)
    tta = row != "threshold"
    grid = (
        SearchGrid.triplet(np.asarray(fit.truth[0]).shape) if row == "TTA + triplet" else SearchGrid.single()
    )
    if gate_kind == "model":
        prob = fit.prob_tta if tta else fit.prob
    elif gate_kind == "oracle":
        prob = fit.labels.astype(np.float64)
        grid = SearchGrid((0.5,), grid.top, grid.min_area, grid.bottom, grid.min_component)
    else:
        prob = None
    return search(prob, fit.seg_tta if tta else fit.seg, fit.truth, grid).thresholds


def _gate(oof: CascadeOOF, gate_kind: str, th: dict[str, Any], tta: bool) -> np.ndarray:
    if gate_kind == "oracle":
        return oof.labels > 0
    if gate_kind == NO_GATE:
        return np.ones(len(oof.ids), bool)
    passed: np.ndarray = (oof.prob_tta if tta else oof.prob) >= th["gate"]
    return passed


def nested_scores(oof: CascadeOOF, gate_kind: str, rows: tuple[str, ...] = ROWS) -> dict[str, list[Scores]]:
    """Per row, per fold: scores on fold k with thresholds chosen on the other folds."""
    out: dict[str, list[Scores]] = {row: [] for row in rows}
    for k in sorted(set(oof.folds.tolist())):
        held = oof.subset(np.flatnonzero(oof.folds == k))
        rest = oof.subset(np.flatnonzero(oof.folds != k))
        for row in rows:
            th = _row_thresholds(row, rest, gate_kind)
            tta = row != "argmax" and row != "threshold"
            out[row].append(_score(held, _gate(held, gate_kind, th, tta), _thresholds(th), tta))
    return out


def _ms(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}


def _fmt(stat: dict[str, float]) -> str:
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def _aucs(oof: CascadeOOF) -> dict[str, dict[str, float]]:
    from triage.evaluation.context import auc_or_nan

    per = {"no TTA": [], "TTA": []}  # type: dict[str, list[float]]
    for k in sorted(set(oof.folds.tolist())):
        idx = np.flatnonzero(oof.folds == k)
        per["no TTA"].append(auc_or_nan(oof.prob[idx], oof.labels[idx]))
        per["TTA"].append(auc_or_nan(oof.prob_tta[idx], oof.labels[idx]))
    return {k: _ms(v) for k, v in per.items()}


def _strata(data: Path | None, ids: list[str]) -> list[dict[str, str]] | None:
    """The data set's metadata.csv rows for ``ids`` (None without one)."""
    if data is None or not (data / "metadata.csv").is_file():
        return None
    from triage.synth.dataset import read_metadata

    rows = {r["image_id"]: r for r in read_metadata(data)}
    return [rows.get(i, {}) for i in ids]


def table(out: Path, data: Path | None = None) -> dict[str, Any]:
    """Table 5.1's structure from the three CV folders, plus the contribution table; writes table.json/md.

    With ``data`` (its metadata.csv), the classifier's out-of-fold AUC comes with the drain confound's
    figures (:mod:`triage.evaluation.confound`)."""
    cascade = load_oof(out / "segmenter", out / "classifier")
    baseline = load_oof(out / "baseline", out / "classifier")
    results: dict[str, Any] = {
        "folds": len(set(cascade.folds.tolist())),
        "images": len(cascade.ids),
        "positives": int(cascade.labels.sum()),
    }
    columns = {"cascade": (cascade, "model"), "baseline": (baseline, NO_GATE)}
    main = {name: nested_scores(oof, kind) for name, (oof, kind) in columns.items()}
    results["table"] = {
        name: {
            row: {m: _ms([getattr(s, m) for s in scores]) for m in ("dice_per_image", "dice", "iou")}
            for row, scores in rows.items()
        }
        for name, rows in main.items()
    }
    contrib_rows = ("TTA", "TTA + triplet")
    contrib = {
        "cascade (classifier gate + positive-only U-Net)": nested_scores(cascade, "model", contrib_rows),
        "positive-only U-Net, oracle gate (true labels)": nested_scores(cascade, "oracle", contrib_rows),
        "positive-only U-Net, no gate": nested_scores(cascade, NO_GATE, contrib_rows),
        "baseline U-Net, no gate": nested_scores(baseline, NO_GATE, contrib_rows),
        "baseline U-Net, classifier gate": nested_scores(baseline, "model", contrib_rows),
        "baseline U-Net, oracle gate": nested_scores(baseline, "oracle", contrib_rows),
    }
    results["contributions"] = {
        name: {
            row: {m: _ms([getattr(s, m) for s in scores]) for m in ("dice_per_image", "dice", "iou")}
            for row, scores in rows.items()
        }
        for name, rows in contrib.items()
    }
    empty = [
        float((cascade.labels[cascade.folds == k] == 0).mean()) for k in sorted(set(cascade.folds.tolist()))
    ]
    results["empty_prediction_dice_per_image"] = _ms(empty)
    results["classifier_auc"] = _aucs(cascade)
    strata = _strata(data, cascade.ids)
    if strata is not None:
        from triage.evaluation.confound import drain_report

        results["classifier_drain"] = drain_report(cascade.prob_tta, cascade.labels, strata)
    (out / "table.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / "table.md").write_text(table_markdown(results), encoding="utf-8")
    return results


def table_markdown(r: dict[str, Any]) -> str:
    t = r["table"]
    lines = [
        f"Cross-validation: {r['folds']} folds, {r['images']} images ({r['positives']} positive); "
        "mean ± std over folds; thresholds chosen on the other folds' out-of-fold predictions.",
        "",
        "| post-processing | Dice/image one-case | Dice/image baseline | Dice one-case | Dice baseline "
        "| IoU one-case | IoU baseline |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in ROWS:
        c, b = t["cascade"][row], t["baseline"][row]
        lines.append(
            f"| {row} | {_fmt(c['dice_per_image'])} | {_fmt(b['dice_per_image'])} | {_fmt(c['dice'])} | "
            f"{_fmt(b['dice'])} | {_fmt(c['iou'])} | {_fmt(b['iou'])} |"
        )
    auc = r["classifier_auc"]
    lines += [
        "",
        f"Classifier alone: AUC {_fmt(auc['no TTA'])} (no TTA), {_fmt(auc['TTA'])} (TTA)."
        + _drain_sentence(r.get("classifier_drain")),
        f"Predicting an empty mask for every image scores Dice per image "
        f"{_fmt(r['empty_prediction_dice_per_image'])} (the share of negative images).",
        "",
        "| model (TTA) | Dice/image, threshold | Dice/image, triplet | Dice, triplet | IoU, triplet |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, rows in r["contributions"].items():
        lines.append(
            f"| {name} | {_fmt(rows['TTA']['dice_per_image'])} | "
            f"{_fmt(rows['TTA + triplet']['dice_per_image'])}"
            f" | {_fmt(rows['TTA + triplet']['dice'])} | {_fmt(rows['TTA + triplet']['iou'])} |"
        )
    return "\n".join(lines) + "\n"


def _drain_sentence(d: dict[str, Any] | None) -> str:
    if not d:
        return ""
    sizes = ", ".join(f"{k} {v['auc']:.3f}" for k, v in d["drain_free_by_size"].items())
    return (
        f" Out of fold, pooled over folds (TTA): drain-free AUC {d['drain_free_auc']:.3f} ({sizes}), "
        f"with a drain {d['with_drain_auc']:.3f}; the drain alone would score {d['drain_only_auc']:.3f}."
    )


def _usage() -> dict[str, float]:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"cpu_s": me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime}


PAIRS = (
    ("cascade", "baseline", "cascade − baseline U-Net"),
    ("cascade", "no gate", "cascade − positive-only U-Net without gate (the gate's own contribution)"),
    ("oracle gate", "no gate", "oracle gate − no gate (what a perfect gate would add)"),
)


def seeds_of(overrides: list[str]) -> tuple[list[int | None], list[str]]:
    """``seed=0,1,2`` among the overrides (for every role) → one cross-validation per seed."""
    seeds: list[int | None] = [None]
    rest = []
    for pair in overrides:
        key, _, value = pair.partition("=")
        if key.strip() == "seed" and "," in value:
            try:
                seeds = [int(v) for v in value.split(",") if v.strip()]
            except ValueError:
                raise ValueError(f"--set seed=LIST expects integers, got {value!r}") from None
        else:
            rest.append(pair)
    return seeds, rest


def compare_arms(dirs: list[Path], rows: tuple[str, ...] = ("TTA", "TTA + triplet")) -> dict[str, Any]:
    """Paired per-image comparisons of the arms over the seeds' CV folders (:mod:`training.paired`)."""
    from training.paired import nested_dice, paired_difference, verdict

    out: dict[str, Any] = {"seeds": [d.name for d in dirs], "rows": {}}
    for row in rows:
        arms: dict[str, list[dict[str, float]]] = {
            "cascade": [],
            "baseline": [],
            "no gate": [],
            "oracle gate": [],
        }
        for d in dirs:
            cascade = load_oof(d / "segmenter", d / "classifier")
            baseline = load_oof(d / "baseline", d / "classifier")
            for name, oof, kind in (
                ("cascade", cascade, "model"),
                ("baseline", baseline, NO_GATE),
                ("no gate", cascade, NO_GATE),
                ("oracle gate", cascade, "oracle"),
            ):
                arms[name].append(nested_dice(oof, row, kind, _row_thresholds, _gate, _thresholds))
        block: dict[str, Any] = {
            "dice_per_image": {n: _ms([float(np.mean(list(m.values()))) for m in v]) for n, v in arms.items()}
        }
        for a, b, label in PAIRS:
            diff = paired_difference(arms[a], arms[b])
            block[label] = {**diff, "verdict": verdict(diff)}
        out["rows"][row] = block
    return out


def paired_markdown(p: dict[str, Any]) -> str:
    lines = [
        f"Seeds: {', '.join(p['seeds'])}. Dice per image out of fold, thresholds chosen on the other folds; "
        "differences per image (Dice averaged over seeds), 95 % percentile bootstrap over images.",
        "",
    ]
    for row, block in p["rows"].items():
        arms = ", ".join(f"{n} {_fmt(v)}" for n, v in block["dice_per_image"].items())
        lines += [
            f"**{row}** — Dice/image (mean ± std over seeds): {arms}",
            "",
            "| comparison | mean difference | 95 % CI | per seed | finding |",
            "|---|---:|---:|---|---|",
        ]
        for _, _, label in PAIRS:
            d = block[label]
            seeds = ", ".join(f"{x:+.3f}" for x in d["per_seed"])
            lines.append(
                f"| {label} | {d['mean']:+.3f} | [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}] | {seeds} | "
                f"{d['verdict']} |"
            )
        lines.append("")
    return "\n".join(lines)


def cross_validate(
    data: Path, out: Path, cfgs: dict[str, TrainConfig], folds: int, cache: Path | None, progress: bool,
    jobs: int = 1,
) -> dict[str, Any]:
    """Steps 1-3 for one set of configs (one seed) into ``out``; returns the table and the timings."""
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, Any] = {}
    for role in ROLES:
        t = time.perf_counter()
        logger.info("cross-validating the %s (%d folds) into %s", role, folds, out)
        train(
            cfgs[role],
            RunRequest(
                data, out / role, folds, "all", resume=True, cache_dir=cache, progress=progress, jobs=jobs
            ),
        )
        timings[role] = round(time.perf_counter() - t, 1)
    block, _ = choose(out / "classifier", out / "segmenter")
    write_thresholds(block, fold_runs(out / "classifier"), fold_runs(out / "segmenter"))
    base_oof = load_oof(out / "baseline")
    base = search(
        None, base_oof.seg_tta, base_oof.truth, SearchGrid.triplet(np.asarray(base_oof.truth[0]).shape)
    )
    base_block = {
        **base.thresholds,
        "grid": "model",
        "chosen_by": {
            **block["chosen_by"],
            "value": round(base.value, 6),
            "gate": "none (baseline)",
            "classifier": None,
            "segmenter": str((out / "baseline").resolve()),
        },
    }
    write_thresholds(base_block, [], fold_runs(out / "baseline"))
    t = time.perf_counter()
    results = table(out, data)
    timings["table"] = round(time.perf_counter() - t, 1)
    return {"table": results, "thresholds": {"cascade": block, "baseline": base_block}, "timings": timings}


def run(
    data: Path,
    out: Path,
    test: Path | None,
    preset: str,
    folds: int,
    overrides: list[str],
    cache: Path | None,
    progress: bool = True,
    jobs: int = 1,
) -> dict[str, Any]:
    """The whole experiment; ``--set seed=0,1,2`` runs one cross-validation per seed (OUT/seed-S/) on the
    same folds and adds the paired comparisons over the seeds (OUT/paired.json, OUT/paired.md). ``jobs``:
    fold runs trained side by side (:mod:`training.fold_jobs`)."""
    t0, cpu0 = time.perf_counter(), _usage()["cpu_s"]
    seeds, rest = seeds_of(overrides)
    out.mkdir(parents=True, exist_ok=True)
    dirs = [out if s is None or len(seeds) == 1 else out / f"seed-{s}" for s in seeds]
    summary: dict[str, Any] = {"seeds": seeds, "runs": {}}
    cfgs: dict[str, TrainConfig] = {}
    for seed, d in zip(seeds, dirs, strict=True):
        cfgs = configs(preset, rest + ([f"seed={seed}"] if seed is not None else []))
        summary["runs"][d.name] = cross_validate(data, d, cfgs, folds, cache, progress, jobs)
        if len(dirs) == 1:
            summary |= summary.pop("runs")[d.name]
    t = time.perf_counter()
    paired = compare_arms(dirs)
    (out / "paired.json").write_text(json.dumps(paired, indent=2) + "\n", encoding="utf-8")
    (out / "paired.md").write_text(paired_markdown(paired), encoding="utf-8")
    summary["paired"] = paired
    if len(dirs) > 1:  # one table per seed, under one heading each
        for name in ("table.md",):
            parts = [f"### {d.name}\n\n" + (d / name).read_text(encoding="utf-8") for d in dirs]
            (out / name).write_text("\n".join(parts), encoding="utf-8")
    timings: dict[str, Any] = {"paired": round(time.perf_counter() - t, 1)}
    if test is not None:
        t = time.perf_counter()
        summary["test"] = {d.name: test_reports(d, test, cache) for d in dirs}
        if len(dirs) == 1:
            summary["test"] = summary["test"][dirs[0].name]
        else:
            parts = [f"### {d.name}\n\n" + (d / "test.md").read_text(encoding="utf-8") for d in dirs]
            (out / "test.md").write_text("\n".join(parts), encoding="utf-8")
        timings["test"] = round(time.perf_counter() - t, 1)
    timings["wall_s_this_invocation"] = round(time.perf_counter() - t0, 1)
    timings["cpu_s_this_invocation"] = round(_usage()["cpu_s"] - cpu0, 1)
    summary["timings"] = {**summary.get("timings", {}), **timings}
    summary["configs"] = {role: cfg.to_dict() for role, cfg in cfgs.items()}
    (out / "experiment.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    return summary
