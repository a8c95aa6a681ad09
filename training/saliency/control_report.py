"""Raw per-model rows (``models.csv``) and the tables of :mod:`training.saliency.control`."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from triage.saliency_metrics import compare_groups

ENDPOINTS = ("mass_confounder", "mass_lungs", "auc")
SECONDARY = (
    "auc_hard_pairs",
    "gradcam_early/mass_confounder",
    "gradcam_early/mass_lungs",
    "occlusion/mass_confounder",
    "occlusion/mass_lungs",
)


COLUMNS = [
    "arm", "region", "lambda", "seed", "kept", "val_acc", "val_auc", "auc", "auc_hard_pairs",
    "mass_confounder", "mass_lungs", "gradcam_early/mass_confounder", "gradcam_early/mass_lungs",
    "occlusion/mass_confounder", "occlusion/mass_lungs", "dead", "term_first", "term_last", "bce_last",
    "train_s", "term_curve",
]  # fmt: skip


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return [dict(r) for r in csv.DictReader(f)]


def append_row(path: Path, row: dict[str, Any]) -> None:
    new = not path.is_file()
    with path.open("a", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({k: "" if row.get(k) is None else row[k] for k in COLUMNS})


def compare(rows: Sequence[dict[str, Any]], arms: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per heatmap arm and measure: CE vs arm over the kept models (Mann–Whitney, effect sizes, means)."""

    def values(arm: str, key: str) -> list[float]:
        return [float(r[key]) for r in rows if r["arm"] == arm and r["kept"] in (1, "1") and r[key] != ""]

    out: dict[str, dict[str, Any]] = {}
    for arm in arms:
        if arm == "ce":
            continue
        out[arm] = {}
        for key in (*ENDPOINTS, *SECONDARY):
            a, b = values(arm, key), values("ce", key)
            entry: dict[str, Any] = {
                "arm_mean": float(np.mean(a)) if a else None,
                "arm_sd": float(np.std(a, ddof=1)) if len(a) > 1 else None,
                "ce_mean": float(np.mean(b)) if b else None,
                "ce_sd": float(np.std(b, ddof=1)) if len(b) > 1 else None,
            }
            if a and b:
                entry.update(compare_groups(a, b).to_dict())
            out[arm][key] = entry
    return out


LABELS = {
    "mass_confounder": ("HiResCAM mass on the confounder", "cam/confounder"),
    "mass_lungs": ("HiResCAM mass inside the lungs", "cam/lungs"),
    "auc": ("AUC, decorrelated test set", None),
    "auc_hard_pairs": ("AUC, positives without vs negatives with the confounder", None),
    "gradcam_early/mass_confounder": ("audit: Grad-CAM early, on confounder", "gradcam_early/confounder"),
    "gradcam_early/mass_lungs": ("audit: Grad-CAM early, inside the lungs", "gradcam_early/lungs"),
    "occlusion/mass_confounder": ("audit: occlusion mass on the confounder", "occlusion/confounder"),
    "occlusion/mass_lungs": ("audit: occlusion mass inside the lungs", "occlusion/lungs"),
}  # fmt: skip


def _fmt(mean: float | None, sd: float | None) -> str:
    if mean is None:
        return "–"
    return f"{mean:.3f} ± {sd:.3f}" if sd is not None else f"{mean:.3f}"


def markdown(result: dict[str, Any]) -> str:
    """One table per measure: a row per arm (kept models, mean ± SD over models, Mann–Whitney p vs ce,
    CLES, rank-biserial r, Cohen's d), its chance and ceiling in the heading."""
    ref = result["reference"]
    comparison = result["comparison"]
    kept = result["kept"]
    lines: list[str] = []
    for key, (label, level) in LABELS.items():
        lv = ref.get(level, {}) if level else {}
        if lv and key.endswith("mass_confounder"):
            levels = f"chance {lv['chance']:.3f}, best map {lv['floor']:.3f}, worst map {lv['ceiling']:.3f}"
        elif lv:
            levels = f"chance {lv['chance']:.3f}, best map {lv['ceiling']:.3f}"
        else:
            levels = "chance 0.5, best 1"
        lines += [
            f"**{label}** ({levels})",
            "",
            "| arm | models kept | mean ± SD | p (MWU vs ce) | CLES | r | d |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        first = next(iter(comparison.values()), {}).get(key, {})
        ce = _fmt(first.get("ce_mean"), first.get("ce_sd"))
        lines.append(f"| ce | {kept.get('ce', 0)} | {ce} | | | | |")
        for arm, table in comparison.items():
            e = table.get(key, {})
            p = e.get("p_value")
            lines.append(
                f"| {arm} | {kept.get(arm, 0)} | {_fmt(e.get('arm_mean'), e.get('arm_sd'))} | "
                f"{'–' if p is None else f'{p:.3g}'} | {_num(e.get('cles'), '.2f')} | "
                f"{_num(e.get('rank_biserial'))} | {_num(e.get('cohen_d'))} |"
            )
        lines.append("")
    return "\n".join(lines)


def _num(v: float | None, spec: str = "+.2f") -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)
