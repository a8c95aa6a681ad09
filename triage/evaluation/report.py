"""``triage evaluate``: predictions → sections → ``REPORT/report.md``, ``report.json``, PNG figures and
``per_image.csv`` (one row per image: label, probability, gate decision, areas, Dice, IoU, strata)."""

from __future__ import annotations

import csv
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from triage.bundle import Thresholds
from triage.evaluation.context import Context, EvalOptions, SectionOutput
from triage.evaluation.models import Cascade
from triage.evaluation.predictions import collect
from triage.evaluation.sections import DEFAULT_SECTIONS, SECTIONS

REPORT_MD = "report.md"
REPORT_JSON = "report.json"
PER_IMAGE = "per_image.csv"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _per_image(ctx: Context, path: Path) -> None:
    p = ctx.predictions
    counts = ctx.counts() if ctx.has_segmenter else None
    columns = sorted({k for s in p.strata for k in s})
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "image_id",
                "label",
                "probability",
                "gated",
                "pred_area_px",
                "truth_area_px",
                "dice",
                "iou",
                *columns,
            ]
        )
        dice = counts.dice_per_image() if counts is not None else None
        iou = counts.iou_per_image() if counts is not None else None
        gated = ctx.gate_mask("model")
        for i, image_id in enumerate(p.ids):
            seg = (
                [int(counts.pred[i]), int(counts.truth[i]), f"{dice[i]:.4f}", f"{iou[i]:.4f}"]  # type: ignore[index]
                if counts is not None
                else ["", "", "", ""]
            )
            w.writerow(
                [
                    image_id,
                    int(p.labels[i]),
                    f"{p.probability[i]:.5f}",
                    int(gated[i]),
                    *seg,
                    *[p.strata[i].get(c, "") for c in columns],
                ]
            )


def evaluate(
    cascade: Cascade,
    data: Path,
    out: Path,
    *,
    options: EvalOptions | None = None,
    sections: Sequence[str] = DEFAULT_SECTIONS,
    thresholds: Thresholds | None = None,
    use_tta: bool = True,
    cache_dir: Path | None = None,
    batch_size: int = 8,
    on_total: Callable[[int], None] | None = None,
    on_done: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Evaluate ``cascade`` on the labelled data set ``data`` and write the report into ``out``."""
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown report sections {unknown}; valid: {list(SECTIONS)}")
    options = options or EvalOptions()
    out.mkdir(parents=True, exist_ok=True)
    work = out / ".work"
    t0 = time.perf_counter()
    try:
        predictions = collect(
            cascade,
            data,
            work,
            cache_dir,
            use_tta=use_tta,
            batch_size=batch_size,
            on_total=on_total,
            on_done=on_done,
        )
        ctx = Context(cascade, predictions, thresholds or cascade.thresholds, out, options, data)
        t1 = time.perf_counter()
        outputs: dict[str, SectionOutput] = {name: SECTIONS[name](ctx) for name in sections}
        _per_image(ctx, out / PER_IMAGE)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    t2 = time.perf_counter()
    report = {
        "model": cascade.label,
        "model_kind": cascade.kind,
        "data": str(Path(data).resolve()),
        "images": len(predictions),
        "tta": use_tta,
        "provenance": cascade.provenance,
        "seconds": {"predict": round(t1 - t0, 1), "sections": round(t2 - t1, 1)},
        "sections": {name: out_.data for name, out_ in outputs.items()},
    }
    (out / REPORT_JSON).write_text(json.dumps(_jsonable(report), indent=1) + "\n", encoding="utf-8")
    md = [
        f"# Evaluation of {cascade.label}",
        "",
        f"Data: `{Path(data).resolve()}` · model: {cascade.kind} · written {time.strftime('%Y-%m-%d %H:%M')}",
        "",
    ]
    for out_ in outputs.values():
        md += [f"## {out_.title}", "", out_.markdown, ""]
    md += ["Per-image results: [per_image.csv](per_image.csv); all numbers: [report.json](report.json)."]
    (out / REPORT_MD).write_text("\n".join(md) + "\n", encoding="utf-8")
    return report
