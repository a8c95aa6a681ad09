"""The report's sections. Each is a callable ``(Context) -> SectionOutput`` registered in :data:`SECTIONS`;
``triage evaluate`` runs :data:`DEFAULT_SECTIONS` in order and any a flag adds.

Adding a section (e.g. ``--saliency`` or ``--corruptions``): write a function that takes the
:class:`~triage.evaluation.context.Context` (predictions, the cascade's models — ``ctx.cascade.gate`` /
``segment`` re-run inference, e.g. on corrupted inputs from ``ctx.predictions.cls_grid`` — thresholds,
options and the report folder ``ctx.out`` for figures) and returns a :class:`SectionOutput`; register it
in :data:`SECTIONS` and pass its name in ``sections`` to :func:`triage.evaluation.report.evaluate`.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

from triage import metrics
from triage.bundle import Thresholds
from triage.evaluation import figures
from triage.evaluation.confound import drain_markdown, drain_report
from triage.evaluation.context import Context, Section, SectionOutput, auc_or_nan, fmt
from triage.evaluation.predictions import STRATA
from triage.evaluation.saliency import corruptions, saliency
from triage.evaluation.search import SearchGrid, best_of, dice_tables, surface


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _segmentation_row(ctx: Context, name: str, gate: str, salt: int) -> tuple[list[str], dict[str, Any]]:
    c = ctx.counts(gate=gate)  # type: ignore[arg-type]
    dpi = c.dice_per_image()
    n = len(dpi)
    values: dict[str, Any] = {
        "dice_per_image": float(dpi.mean()),
        "dice_per_image_ci": ctx.ci(lambda i: float(dpi[i].mean()), n, salt),
        "dice": c.pooled_dice(),
        "dice_ci": ctx.ci(lambda i: c.pooled_dice(i), n, salt + 1),
        "iou": c.pooled_iou(),
        "iou_ci": ctx.ci(lambda i: c.pooled_iou(i), n, salt + 2),
        "flagged": int(((c.pred > 0) & c.gated).sum()),
    }
    row = [
        name,
        fmt(values["dice_per_image"], values["dice_per_image_ci"]),
        fmt(values["dice"], values["dice_ci"]),
        fmt(values["iou"], values["iou_ci"]),
        str(values["flagged"]),
    ]
    return row, values


def summary(ctx: Context) -> SectionOutput:
    p = ctx.predictions
    th = ctx.thresholds
    y = p.labels > 0
    data: dict[str, Any] = {
        "images": len(p),
        "positives": int(y.sum()),
        "skipped_with_problems": len(p.problems),
        "tta": p.tta,
        "thresholds": _thresholds_dict(th),
    }
    md = [
        f"{len(p)} images, {int(y.sum())} with pneumothorax"
        + (f"; {len(p.problems)} skipped for label problems" if p.problems else "")
        + f". Test-time augmentation: {'on (' + ', '.join(ctx.cascade.tta) + ')' if p.tta else 'off'}.",
        "",
        f"Thresholds: gate {th.gate:g}, top {th.top:g}, min_area {th.min_area} px, bottom {th.bottom:g}, "
        f"min_component {th.min_component} px (segmenter grid); chosen by: {th.chosen_by.get('metric', '?')} "
        f"on {th.chosen_by.get('data', '?')}.",
    ]
    if ctx.has_classifier and 0 < y.sum() < len(y):
        auc = metrics.roc_auc(p.probability, y)
        auc_ci = ctx.ci(lambda i: auc_or_nan(p.probability[i], y[i]), len(y), 11)
        ss = metrics.sensitivity_specificity(p.probability, y, th.gate)
        called = p.probability >= th.gate
        sens_ci = ctx.ci(lambda i: _rate(called[i], y[i], True), len(y), 12)
        spec_ci = ctx.ci(lambda i: _rate(~called[i], ~y[i], True), len(y), 13)
        data["classifier"] = {
            "auc": auc,
            "auc_ci": auc_ci,
            "sensitivity": ss.sensitivity,
            "sensitivity_ci": sens_ci,
            "specificity": ss.specificity,
            "specificity_ci": spec_ci,
            "tp": ss.tp,
            "fp": ss.fp,
            "tn": ss.tn,
            "fn": ss.fn,
            "gate": th.gate,
        }
        md += [
            "",
            "**Classifier (the gate)**",
            "",
            _table(
                ["AUC", f"sensitivity at gate {th.gate:g}", "specificity", "TP / FP / TN / FN"],
                [
                    [
                        fmt(auc, auc_ci),
                        fmt(ss.sensitivity, sens_ci),
                        fmt(ss.specificity, spec_ci),
                        f"{ss.tp} / {ss.fp} / {ss.tn} / {ss.fn}",
                    ]
                ],
            ),
        ]
        drain = drain_report(p.probability, y, p.strata, ctx.ci)
        if drain is not None:
            data["classifier"]["drain"] = drain
            md += ["", "**The drain confound** (AUCs a drain cannot earn)", "", drain_markdown(drain)]
    if ctx.has_segmenter:
        rows, seg = [], {}
        variants = ([("cascade (gate + segmenter)", "model")] if ctx.has_classifier else []) + [
            ("segmenter on every image (no gate)", "none"),
            ("segmenter, oracle gate (true label)", "oracle"),
        ]
        for k, (name, gate) in enumerate(variants):
            row, values = _segmentation_row(ctx, name, gate, 20 + 3 * k)
            rows.append(row)
            seg[gate] = values
        data["segmentation"] = seg
        md += [
            "",
            "**Segmentation** (segmenter grid; Dice per image is 1 when prediction and truth are both empty)",
            "",
            _table(
                ["decision", "Dice per image", "Dice (pooled)", "IoU (pooled)", "images with a mask"], rows
            ),
        ]
    if ctx.options.bootstrap:
        md += [
            "",
            f"Brackets: {ctx.options.level:.0%} percentile bootstrap intervals over images "
            f"({ctx.options.bootstrap} resamples).",
        ]
    return SectionOutput("Summary", "\n".join(md), data)


def _auc_at(scores: np.ndarray, labels: np.ndarray, i: np.ndarray) -> float:
    return auc_or_nan(scores[i], labels[i])


def _mean_at(values: np.ndarray, i: np.ndarray) -> float:
    return float(values[i].mean())


def _rate(hit: np.ndarray, of: np.ndarray, _: bool) -> float:
    total = int(of.sum())
    return float((hit & of).sum()) / total if total else float("nan")


def _thresholds_dict(th: Thresholds) -> dict[str, Any]:
    return {
        "gate": th.gate,
        "top": th.top,
        "min_area": th.min_area,
        "bottom": th.bottom,
        "min_component": th.min_component,
        "chosen_by": th.chosen_by,
    }


def strata(ctx: Context) -> SectionOutput:
    p = ctx.predictions
    y = p.labels > 0
    negatives = ~y
    dice = ctx.counts().dice_per_image() if ctx.has_segmenter else None
    called = p.probability >= ctx.thresholds.gate
    data: dict[str, Any] = {}
    md: list[str] = []
    for k, column in enumerate(STRATA):
        values = sorted({s.get(column, "") for s in p.strata} - {""})
        if len(values) < 2 and column != "size_stratum":
            continue
        rows, block = [], {}
        for j, value in enumerate(values):
            member = np.array([s.get(column) == value for s in p.strata])
            # size strata: positives of this size against every negative
            auc_set = member | negatives if column == "size_stratum" and value != "none" else member
            idx = np.flatnonzero(auc_set)
            pr, yy = p.probability[idx], y[idx]
            entry: dict[str, Any] = {"images": int(member.sum()), "positives": int((member & y).sum())}
            salt = 100 + 10 * k + j
            if ctx.has_classifier:
                entry["auc"] = auc_or_nan(pr, yy)
                entry["auc_ci"] = ctx.ci(partial(_auc_at, pr, yy), len(idx), salt)
                entry["sensitivity"] = _rate(called[member], y[member], True)
                entry["specificity"] = _rate(~called[member], negatives[member], True)
            if dice is not None:
                d = dice[member]
                entry["dice_per_image"] = float(d.mean())
                entry["dice_per_image_ci"] = ctx.ci(partial(_mean_at, d), len(d), salt + 1)
            block[value] = entry
            rows.append(
                [
                    value,
                    str(entry["images"]),
                    str(entry["positives"]),
                    fmt(entry.get("auc", float("nan")), entry.get("auc_ci")),
                    fmt(entry.get("sensitivity", float("nan"))),
                    fmt(entry.get("specificity", float("nan"))),
                    fmt(entry.get("dice_per_image", float("nan")), entry.get("dice_per_image_ci")),
                ]
            )
        data[column] = block
        md += [
            f"**{column}**"
            + (" (AUC: positives of that size against all negatives)" if column == "size_stratum" else ""),
            "",
            _table(
                [column, "images", "positives", "AUC", "sensitivity", "specificity", "Dice per image"], rows
            ),
            "",
        ]
    return SectionOutput("Results per stratum", "\n".join(md) or "No strata in this data set.", data)


def roc(ctx: Context) -> SectionOutput:
    p = ctx.predictions
    y = p.labels > 0
    if not ctx.has_classifier or y.all() or not y.any():
        return SectionOutput("ROC curve", "No classifier, or only one class in the data: no ROC curve.")
    fpr, tpr, _ = metrics.roc_curve(p.probability, y)
    auc = metrics.roc_auc(p.probability, y)
    ss = metrics.sensitivity_specificity(p.probability, y, ctx.thresholds.gate)
    figures.roc_png(
        ctx.out / "roc.png", fpr, tpr, auc, (1 - ss.specificity, ss.sensitivity), ctx.thresholds.gate
    )
    return SectionOutput(
        "ROC curve", "![ROC curve](roc.png)", {"fpr": fpr.tolist(), "tpr": tpr.tolist()}, ["roc.png"]
    )


def _with(values: tuple[Any, ...], extra: Any) -> tuple[Any, ...]:
    return tuple(sorted(set(values) | {extra}))


def thresholds(ctx: Context) -> SectionOutput:
    """Dice per image over the thresholds on this data: where the card's choice sits on the surface."""
    if not ctx.has_segmenter:
        return SectionOutput("Threshold surface", "No segmenter: no threshold surface.")
    p, th = ctx.predictions, ctx.thresholds
    assert p.seg is not None
    base = SearchGrid.triplet((int(p.seg.shape[1]), int(p.seg.shape[2])))
    gates = _with(base.gate, th.gate) if ctx.has_classifier else (0.0,)
    grid = SearchGrid(
        gates,
        _with(base.top, th.top),
        _with(base.min_area, th.min_area),
        _with(base.bottom, th.bottom),
        _with(base.min_component, th.min_component),
    )
    d, e = dice_tables([p.seg[i] for i in range(len(p))], [p.truth(i) for i in range(len(p))], grid)
    values = surface(p.probability if ctx.has_classifier else np.ones(len(p)), d, e, grid)
    best = best_of(values, grid, len(p))
    gi = grid.gate.index(th.gate) if ctx.has_classifier else 0
    ti, ai = grid.top.index(th.top), grid.min_area.index(th.min_area)
    bi, ci = grid.bottom.index(th.bottom), grid.min_component.index(th.min_component)
    at_card = float(values[gi, ti, ai, bi, ci])
    figures.surface_png(ctx.out / "threshold_surface.png", grid, values, (gi, ti, ai, bi, ci))
    md = (
        f"Dice per image at the model's thresholds: {at_card:.3f}. The best on this data would be "
        f"{best.value:.3f} at gate {best.thresholds['gate']:g}, top {best.thresholds['top']:g}, "
        f"min_area {best.thresholds['min_area']}, bottom {best.thresholds['bottom']:g}, min_component "
        f"{best.thresholds['min_component']} (chosen on the data it is measured on, so optimistic).\n\n"
        "![threshold surface](threshold_surface.png)"
    )
    return SectionOutput(
        "Threshold surface",
        md,
        {"at_model_thresholds": at_card, "best_on_this_data": best.thresholds, "best_value": best.value},
        ["threshold_surface.png"],
    )


def overlays(ctx: Context) -> SectionOutput:
    if not ctx.has_segmenter:
        return SectionOutput("Best and worst cases", "No segmenter: no overlays.")
    p = ctx.predictions
    c = ctx.counts()
    dice = c.dice_per_image()
    pos = np.flatnonzero(p.labels > 0)
    neg_fp = np.flatnonzero((p.labels == 0) & (c.pred > 0))
    k = ctx.options.overlays
    best = list(pos[np.argsort(-dice[pos], kind="stable")][:k])
    rest = np.array([i for i in pos if i not in best], dtype=np.intp)
    groups = {
        "best positives": best,
        "worst positives": list(rest[np.argsort(dice[rest], kind="stable")][:k]),
        "worst false positives": list(neg_fp[np.argsort(-c.pred[neg_fp], kind="stable")][:k]),
    }
    groups = {name: rows for name, rows in groups.items() if rows}
    if not groups:
        return SectionOutput("Best and worst cases", "No images to show.")
    figures.overlays_png(ctx.out / "overlays.png", ctx, groups, dice)
    listed = {
        name: [
            {"image_id": p.ids[i], "dice": float(dice[i]), "probability": float(p.probability[i])}
            for i in rows
        ]
        for name, rows in groups.items()
    }
    md = (
        "Cyan: the cascade's mask; red: the ground truth; colour: the classifier's CAM. Captions: Dice per "
        "image, gate probability, size stratum.\n\n![overlays](overlays.png)"
    )
    return SectionOutput("Best and worst cases", md, listed, ["overlays.png"])


SECTIONS: dict[str, Section] = {
    "summary": summary,
    "strata": strata,
    "roc": roc,
    "thresholds": thresholds,
    "overlays": overlays,
    "saliency": saliency,  # `triage evaluate --saliency` (triage/evaluation/saliency.py)
    "corruptions": corruptions,  # `triage evaluate --corruptions`
}
DEFAULT_SECTIONS = ("summary", "strata", "roc", "thresholds", "overlays")
