"""The report's pictures: ROC curve and threshold surface (matplotlib, Agg, imported lazily: install
``matplotlib`` — the ``training`` extra has it — to write them), and best/worst overlays drawn with the
runtime's own overlay renderer (:mod:`triage.outputs.overlay`) on the source images."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw

from triage.cascade.postprocess import triplet_mask
from triage.cascade.preprocess import to_source
from triage.data import folder
from triage.data.rle import rle_decode
from triage.io.dicom import read_image
from triage.outputs.atomic import atomic_save_png
from triage.outputs.overlay import outline, output_size, render_overlay

if TYPE_CHECKING:
    from triage.evaluation.context import Context
    from triage.evaluation.search import SearchGrid

TRUTH_RGB = (255, 48, 48)


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # the runtime alone has no matplotlib
        raise RuntimeError(
            "the report's plots need matplotlib: pip install matplotlib (or the training extra)"
        ) from exc
    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _save(fig: Any, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas: Any = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    atomic_save_png(path, np.ascontiguousarray(rgba[..., :3]))


def roc_png(
    path: Path,
    fpr: NDArray[np.float64],
    tpr: NDArray[np.float64],
    auc: float,
    point: tuple[float, float],
    gate: float,
) -> None:
    fig = _figure(4.6, 4.4)
    ax = fig.add_subplot()
    ax.plot(fpr, tpr, color="#1f5fa8", lw=2, label=f"classifier, AUC {auc:.3f}")
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="chance")
    ax.plot(
        *point,
        "o",
        color="#d1495b",
        ms=8,
        label=f"gate {gate:g}: sens {point[1]:.2f}, spec {1 - point[0]:.2f}",
    )
    ax.set(
        xlabel="1 − specificity (false-positive rate)",
        ylabel="sensitivity (true-positive rate)",
        xlim=(-0.01, 1.01),
        ylim=(-0.01, 1.01),
        title="ROC: pneumothorax vs none",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)


def surface_png(
    path: Path, grid: SearchGrid, values: NDArray[np.float32], at: tuple[int, int, int, int, int]
) -> None:
    """Two slices of the Dice-per-image surface through the model's thresholds ``at`` (grid indices)."""
    gi, ti, ai, bi, ci = at
    fig = _figure(9.6, 4.2)
    panels = [
        (values[:, ti, :, bi, ci].T, grid.gate, grid.min_area, "gate threshold", "min_area (px)", (gi, ai)),
        (values[gi, :, ai, :, ci], grid.bottom, grid.top, "bottom", "top", (bi, ti)),
    ]
    vmin, vmax = float(values.min()), float(values.max())
    for k, (z, xs, ys, xl, yl, (mx, my)) in enumerate(panels):
        ax = fig.add_subplot(1, 2, k + 1)
        im = ax.imshow(z, origin="lower", aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax)
        ax.plot(mx, my, marker="*", color="#ff4040", ms=14, mec="white")
        step_x = max(1, len(xs) // 8)
        ax.set_xticks(range(0, len(xs), step_x), [f"{v:g}" for v in xs[::step_x]], fontsize=7)
        ax.set_yticks(range(len(ys)), [f"{v:g}" for v in ys], fontsize=7)
        ax.set(xlabel=xl, ylabel=yl)
        fixed = (
            f"top {grid.top[ti]:g}, bottom {grid.bottom[bi]:g}"
            if k == 0
            else f"gate {grid.gate[gi]:g}, min_area {grid.min_area[ai]}"
        )
        ax.set_title(f"Dice per image ({fixed}, min_comp {grid.min_component[ci]})", fontsize=8)
    fig.colorbar(im, ax=fig.axes, shrink=0.85, label="mean Dice per image")
    _save(fig, path)


def _source(ctx: Context, image_id: str) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """The source image and its ground truth at source resolution (exact, not from the grid)."""
    item = next(it for it in ctx.predictions.listing.items if it.id == image_id)
    image = (
        read_image(item.image).pixels.astype(np.float32) if item.is_dicom else folder.read_image(item.image)
    )
    truth = np.zeros(image.shape, bool)
    for rle in item.rles or ():
        truth |= rle_decode(rle, *image.shape)
    if item.mask is not None:
        truth = folder.read_mask(item.mask)
    return image, truth


def _tile(ctx: Context, i: int, dice: float) -> NDArray[np.uint8]:
    p = ctx.predictions
    assert p.seg_grid is not None and p.seg is not None
    row = p.rows[i]
    image, truth = _source(ctx, p.ids[i])
    image = np.clip(image, 0.0, 1.0)
    geometry = p.seg_grid.geometry(row)
    gated = bool(ctx.counts().gated[i])
    pred_grid = triplet_mask(np.asarray(p.seg[i], np.float32), ctx.thresholds) if gated else None
    pred = (to_source(pred_grid.astype(np.float32), geometry) >= 0.5) if pred_grid is not None else None
    saliency = None
    if p.cams is not None and p.cls_grid is not None:
        saliency = np.clip(to_source(np.asarray(p.cams[i], np.float32), p.cls_grid.geometry(row)), 0.0, 1.0)
    stratum = p.strata[i].get("size_stratum", "")
    caption = f"Dice {dice:.2f} · p {p.probability[i]:.2f} · {stratum}"
    tile = render_overlay(
        image,
        pred if pred is not None else np.zeros(image.shape, bool),
        saliency,
        max_side=ctx.options.tile,
        caption=caption,
    )
    oh, ow = output_size(image.shape, ctx.options.tile)
    if truth.any():
        small = (
            np.asarray(Image.fromarray(truth.astype(np.uint8) * 255).resize((ow, oh), Image.Resampling.BOX))
            >= 128
        )
        if not small.any():
            small = (
                np.asarray(
                    Image.fromarray(truth.astype(np.uint8) * 255).resize((ow, oh), Image.Resampling.BOX)
                )
                > 0
            )
        tile = tile.copy()
        tile[:oh][outline(small, 1)] = TRUTH_RGB
    return tile


def overlays_png(path: Path, ctx: Context, groups: dict[str, list[int]], dice: NDArray[np.float64]) -> None:
    """One row per group, tiles of ``ctx.options.tile`` px with their captions, group names on the left."""
    rows = {name: [_tile(ctx, i, float(dice[i])) for i in idx] for name, idx in groups.items()}
    th = max(t.shape[0] for ts in rows.values() for t in ts)
    tw = max(t.shape[1] for ts in rows.values() for t in ts)
    label_w, gap, head = 130, 6, 22
    ncols = max(len(ts) for ts in rows.values())
    canvas = Image.new("RGB", (label_w + ncols * (tw + gap), head + len(rows) * (th + gap)), (24, 24, 24))
    draw = ImageDraw.Draw(canvas)
    draw.text(
        (8, 5), "cyan: the cascade's mask   red: ground truth   colour: classifier CAM", fill=(240, 240, 240)
    )
    for r, (name, tiles) in enumerate(rows.items()):
        y = head + r * (th + gap)
        draw.text((8, y + th // 2 - 12), name.replace(" ", "\n", 1), fill=(240, 240, 240))
        for c, tile in enumerate(tiles):
            canvas.paste(Image.fromarray(tile), (label_w + c * (tw + gap), y))
    atomic_save_png(path, np.asarray(canvas))
