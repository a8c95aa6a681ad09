"""``triage experiment --test``: each fold's cascade (classifier + segmenter runs) and baseline evaluated on
the held-out set with ``triage evaluate``; per-stratum AUC and Dice per image, mean ± std over the fold
models, and the classifier's drain-free AUC beside its AUC (:mod:`triage.evaluation.confound`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from training.run import fold_runs
from triage.evaluation.context import EvalOptions

ROLES = ("classifier", "segmenter", "baseline")


def _ms(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}


def _fmt(stat: dict[str, float]) -> str:
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"


STRATA_KEYS = ("size_stratum", "drain", "view", "photometric")


def test_reports(
    out: Path, test: Path, cache: Path | None, on_report: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Evaluate each fold's cascade and baseline on ``test``; per-stratum mean ± std over the fold models."""
    from training.eval_models import from_runs
    from triage.evaluation.report import evaluate

    per: dict[str, list[dict[str, Any]]] = {"cascade": [], "baseline": []}
    cls_runs, seg_runs, base_runs = (fold_runs(out / r) for r in ROLES)
    for k, (c, s, b) in enumerate(zip(cls_runs, seg_runs, base_runs, strict=True)):
        for name, runs in (("cascade", [c, s]), ("baseline", [b])):
            target = out / "test" / f"{name}-fold-{k}"
            done = target / "report.json"
            if not done.is_file():
                if on_report:
                    on_report(f"{name} fold {k}")
                options = EvalOptions(bootstrap=200 if k == 0 else 0, overlays=4 if k == 0 else 0)
                sections = (
                    ("summary", "strata", "roc", "thresholds", "overlays")
                    if k == 0
                    else ("summary", "strata")
                )
                evaluate(from_runs(runs), test, target, options=options, sections=sections, cache_dir=cache)
            per[name].append(json.loads(done.read_text(encoding="utf-8")))
    summary: dict[str, Any] = {}
    for name, reports in per.items():
        entry: dict[str, Any] = {}
        s0 = [r["sections"]["summary"] for r in reports]
        gate = "model" if name == "cascade" else "none"
        entry["dice_per_image"] = _ms([s["segmentation"][gate]["dice_per_image"] for s in s0])
        entry["dice"] = _ms([s["segmentation"][gate]["dice"] for s in s0])
        entry["iou"] = _ms([s["segmentation"][gate]["iou"] for s in s0])
        if name == "cascade":
            entry["auc"] = _ms([s["classifier"]["auc"] for s in s0])
            drains = [s["classifier"].get("drain") for s in s0]
            if all(drains):
                for key in ("drain_free_auc", "with_drain_auc", "drain_only_auc"):
                    values = [d[key] for d in drains if d.get(key) is not None]  # NaN is written as null
                    entry[key] = _ms(values) if values else {"mean": float("nan"), "std": float("nan")}
            entry["sensitivity"] = _ms([s["classifier"]["sensitivity"] for s in s0])
            entry["specificity"] = _ms([s["classifier"]["specificity"] for s in s0])
        strata: dict[str, Any] = {}
        for key in STRATA_KEYS:
            blocks = [r["sections"]["strata"].get(key, {}) for r in reports]
            for value in sorted(set().union(*[set(b) for b in blocks])):
                rows = [b[value] for b in blocks if value in b]
                cell: dict[str, Any] = {"images": rows[0]["images"], "positives": rows[0]["positives"]}
                for metric in ("auc", "sensitivity", "dice_per_image"):
                    vals = [x[metric] for x in rows if x.get(metric) is not None]
                    if vals:
                        cell[metric] = _ms(vals)
                strata.setdefault(key, {})[value] = cell
        entry["strata"] = strata
        summary[name] = entry
    (out / "test.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out / "test.md").write_text(test_markdown(summary, test), encoding="utf-8")
    return summary


def test_markdown(s: dict[str, Any], test: Path) -> str:
    c, b = s["cascade"], s["baseline"]
    lines = [
        f"Held-out test set `{test}`: each fold's models, mean ± std over the 5 fold models; thresholds from "
        "the run cards (chosen on all out-of-fold predictions); TTA on.",
        "",
        "| | AUC | sensitivity | specificity | Dice/image | Dice | IoU |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| cascade | {_fmt(c['auc'])} | {_fmt(c['sensitivity'])} | {_fmt(c['specificity'])} | "
        f"{_fmt(c['dice_per_image'])} | {_fmt(c['dice'])} | {_fmt(c['iou'])} |",
        f"| baseline | – | – | – | {_fmt(b['dice_per_image'])} | {_fmt(b['dice'])} | {_fmt(b['iou'])} |",
        "",
    ]
    if "drain_free_auc" in c:
        lines += [
            f"Classifier: drain-free AUC {_fmt(c['drain_free_auc'])}, with a drain "
            f"{_fmt(c['with_drain_auc'])}; the drain alone would score {_fmt(c['drain_only_auc'])}.",
            "",
        ]
    for key in STRATA_KEYS:
        if key not in c["strata"]:
            continue
        lines += [
            f"**{key}**",
            "",
            "| value | images | positives | classifier AUC | sensitivity | cascade Dice/image "
            "| baseline Dice/image |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for value, cell in c["strata"][key].items():
            base = b["strata"].get(key, {}).get(value, {})
            lines.append(
                f"| {value} | {cell['images']} | {cell['positives']} | "
                f"{_fmt(cell['auc']) if 'auc' in cell else '–'} | "
                f"{_fmt(cell['sensitivity']) if 'sensitivity' in cell else '–'} | "
                f"{_fmt(cell['dice_per_image'])} | "
                f"{_fmt(base['dice_per_image']) if 'dice_per_image' in base else '–'} |"
            )
        lines.append("")
    return "\n".join(lines)
