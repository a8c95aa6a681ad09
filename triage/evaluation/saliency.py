"""Report sections of ``triage evaluate --saliency`` and ``--corruptions``.

``saliency``: where the maps point, on the classifier's grid, for every map the model has —

* ``CAM``: the classifier's class-activation map as the runtime shows it (ReLU, divided by its max);
* ``saliency model``: the bundle's (or run's) saliency model, when there is one;

scored with :mod:`triage.saliency_metrics` against the data set's regions when it has them: the lung
fields (mass inside, Diff), the pneumothorax (EHR-AUC and pointing game, on positive images), the chest
drain (mass on it, on images with a drain; synthetic sets have ``drains/``) and the reading heatmap
(KL, CC, SIM). Means over images, with the number of images each is over; a figure shows a few positive
images with each map next to the reading heatmap.

``corruptions``: :mod:`triage.evaluation.corruptions` (5 corruptions × 5 severities).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from triage import saliency_metrics as sm
from triage.cascade.preprocess import fit, normalise
from triage.evaluation.context import Context, SectionOutput
from triage.evaluation.corruptions import evaluate_corruptions, markdown, render_heatmap
from triage.outputs.atomic import atomic_save_png
from triage.outputs.overlay import render_overlay

METRICS = (
    ("lungs", "mass_inside", "mass inside the lungs"),
    ("lungs", "diff", "Diff (inside − outside lungs)"),
    ("lesion", "ehr_auc", "EHR-AUC on the pneumothorax (positives)"),
    ("lesion", "pointing_game", "pointing game on the pneumothorax (positives)"),
    ("drain", "mass_inside", "mass on the chest drain (images with one)"),
    ("target", "kl", "KL to the reading heatmap (lower is better)"),
    ("target", "cc", "CC with the reading heatmap"),
    ("target", "sim", "SIM with the reading heatmap"),
)
FIGURE = "saliency.png"
TILE_SIDE = 256


def _enlarge(arr: NDArray[np.float32], side: int, method: Image.Resampling) -> NDArray[np.float32]:
    """``arr`` resized so that its longer side is ``side`` px (grids are small; overlays never enlarge)."""
    h, w = arr.shape
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    out = Image.fromarray(np.ascontiguousarray(arr, np.float32), mode="F").resize(size, method)
    return np.clip(np.asarray(out, np.float32), 0.0, 1.0)


def _drains(ctx: Context) -> dict[str, Path]:
    """image id → drain mask file, from the data set's metadata.csv (``drain_mask`` column), if any."""
    meta = ctx.data / "metadata.csv"
    if not meta.is_file():
        return {}
    import csv

    with meta.open(newline="", encoding="utf-8") as f:
        return {r["image_id"]: ctx.data / r["drain_mask"] for r in csv.DictReader(f) if r.get("drain_mask")}


def _model_maps(ctx: Context, rows: list[int]) -> NDArray[np.float32] | None:
    """The saliency model's maps (N, h, w) in [0, 1] for the classifier-grid rows, or None."""
    models = ctx.cascade.models
    spec = getattr(models.bundle, "saliency", None)
    if getattr(models, "saliency", None) is None or spec is None:
        return None
    grid = ctx.predictions.cls_grid
    assert grid is not None
    out = []
    for start in range(0, len(rows), 8):
        x = []
        for r in rows[start : start + 8]:
            image = grid.image(r)
            if tuple(spec.input_size) != tuple(grid.grid.size):
                image, _ = fit(image, spec.input_size, spec.resize)
            x.append(normalise(image, spec))
        out.append(models.saliency_map(np.stack(x)))
    return np.concatenate(out)


def _regions(ctx: Context, i: int, row: int, drains: dict[str, Path]) -> dict[str, Any]:
    p = ctx.predictions
    grid = p.cls_grid
    assert grid is not None
    regions: dict[str, Any] = {}
    if grid.lungs is not None and grid.items[row].get("has_lungs", True):
        regions["lungs"] = np.asarray(grid.lungs[row]) > 0
    if p.labels[i] > 0:
        regions["lesion"] = grid.mask(row)
    if grid.heatmaps is not None and grid.items[row].get("has_heatmap", True):
        regions["target"] = np.asarray(grid.heatmaps[row], np.float64) / 255.0
    path = drains.get(p.ids[i])
    if path is not None and path.is_file():
        with Image.open(path) as img:
            cover, _ = fit((np.asarray(img) > 0).astype(np.float32), grid.grid.size, grid.grid.resize)
        regions["drain"] = cover > 0
    return regions


def _score(saliency: NDArray[np.floating], regions: dict[str, Any]) -> dict[str, float]:
    shape = next(iter(r.shape for r in regions.values()), saliency.shape)
    h = sm.fit_map(np.asarray(saliency, np.float64), (shape[0], shape[1]))
    peak = float(h.max())
    if peak <= 0:
        return {}
    h = h / peak
    out: dict[str, float] = {}
    if "lungs" in regions:
        out["lungs/mass_inside"] = sm.mass_inside(h, regions["lungs"])
        out["lungs/diff"] = sm.inside_outside_diff(h, regions["lungs"])
    if "lesion" in regions and regions["lesion"].any():
        out["lesion/ehr_auc"] = sm.ehr_auc(h, regions["lesion"])
        out["lesion/pointing_game"] = sm.pointing_game(h, regions["lesion"])
    if "drain" in regions and regions["drain"].any():
        out["drain/mass_inside"] = sm.mass_inside(h, regions["drain"])
    if "target" in regions:
        out["target/kl"] = sm.kl_divergence(h, regions["target"])
        out["target/cc"] = sm.pearson_cc(h, regions["target"])
        out["target/sim"] = sm.similarity(h, regions["target"])
    return out


def saliency(ctx: Context) -> SectionOutput:
    p = ctx.predictions
    if p.cls_grid is None:
        return SectionOutput("Saliency", "No classifier: no saliency maps to measure.")
    rows = p.rows
    sources: dict[str, NDArray[np.float32]] = {}
    if p.cams is not None:
        sources["CAM"] = np.asarray(p.cams, np.float32)
    model_maps = _model_maps(ctx, rows)
    if model_maps is not None:
        sources["saliency model"] = model_maps
    if not sources:
        return SectionOutput("Saliency", "The model outputs no saliency map (no CAM, no saliency model).")
    drains = _drains(ctx)
    per_source: dict[str, dict[str, list[float]]] = {name: {} for name in sources}
    defined = dict.fromkeys(sources, 0)
    available: set[str] = set()
    for i, row in enumerate(rows):
        regions = _regions(ctx, i, row, drains)
        available |= set(regions)
        for name, maps in sources.items():
            scores = _score(maps[i], regions)
            defined[name] += bool(scores)
            for key, value in scores.items():
                if np.isfinite(value):
                    per_source[name].setdefault(key, []).append(value)
    data: dict[str, Any] = {"images": len(rows), "maps_with_mass": defined}
    header = ["metric", *(f"{name}" for name in sources), "images"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for region, metric, label in METRICS:
        key = f"{region}/{metric}"
        counts = [len(per_source[name].get(key, [])) for name in sources]
        if not any(counts):
            continue
        means = [
            float(np.mean(per_source[name][key])) if per_source[name].get(key) else float("nan")
            for name in sources
        ]
        data[key] = dict(zip(sources, means, strict=True))
        cells = [f"{m:.3f}" if np.isfinite(m) else "–" for m in means]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {max(counts)} |")
    if len(lines) == 2:
        lines = (
            ["No map had any positive value: nothing to measure."]
            if available
            else [
                "The data set has no lung masks, lesion masks, drains or reading heatmaps to measure against."
            ]
        )
    figure = _figure(ctx, sources, rows)
    md = [
        "Maps on the classifier's grid, each scaled to its maximum; a map with no positive value is left out "
        f"(maps with mass: {', '.join(f'{k} {v}/{len(rows)}' for k, v in defined.items())}). A uniform map "
        "would put the region's area fraction inside it.",
        "",
        *lines,
    ]
    figures = []
    if figure:
        md += [
            "",
            "Positive images: each map over the radiograph; cyan: the ground-truth pneumothorax.",
            "",
            f"![saliency]({FIGURE})",
        ]
        figures.append(FIGURE)
    return SectionOutput("Saliency", "\n".join(md), data, figures)


def _figure(ctx: Context, sources: dict[str, NDArray[np.float32]], rows: list[int], n: int = 4) -> bool:
    """Up to n positive images: one overlay per map source and the reading heatmap, in a grid."""
    p = ctx.predictions
    grid = p.cls_grid
    assert grid is not None
    positives = [i for i in range(len(rows)) if p.labels[i] > 0][:n]
    if not positives:
        return False
    tiles: list[list[np.ndarray]] = []
    side = TILE_SIDE
    for i in positives:
        image = _enlarge(grid.image(rows[i]), side, Image.Resampling.BILINEAR)
        mask = _enlarge(grid.mask(rows[i]).astype(np.float32), side, Image.Resampling.NEAREST) >= 0.5
        line = []
        for name, maps in sources.items():
            heat = np.clip(maps[i], 0, 1).astype(np.float32)
            line.append(render_overlay(image, mask, heat, max_side=side + 80, caption=name))
        if grid.heatmaps is not None:
            heat = np.asarray(grid.heatmaps[rows[i]], np.float32) / 255.0
            line.append(render_overlay(image, mask, heat, max_side=side + 80, caption="reading heatmap"))
        tiles.append(line)
    h = max(t.shape[0] for line in tiles for t in line)
    w = max(t.shape[1] for line in tiles for t in line)
    canvas = np.full((h * len(tiles), w * len(tiles[0]), 3), 255, np.uint8)
    for r, line in enumerate(tiles):
        for c, tile in enumerate(line):
            canvas[r * h : r * h + tile.shape[0], c * w : c * w + tile.shape[1]] = tile
    atomic_save_png(ctx.out / FIGURE, canvas)
    return True


def corruptions(ctx: Context) -> SectionOutput:
    p = ctx.predictions
    table = evaluate_corruptions(
        ctx.cascade,
        ctx.data,
        grids=(p.cls_grid, p.seg_grid),
        rows=p.rows,
        use_tta=p.tta,
        thresholds=ctx.thresholds,
    )
    render_heatmap(table, ctx.out / "corruptions.png")
    md = markdown(table) + "\n\n![corruptions](corruptions.png)"
    return SectionOutput("Corruption robustness", md, table.to_dict(), ["corruptions.png"])
