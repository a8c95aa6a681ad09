"""Corruption robustness (``triage evaluate --corruptions``): the cascade on 5 corruptions × 5 severities
(:mod:`triage.corruptions`, seeds.md E) next to the clean data — 26 evaluation sets.

Each image of the data set is taken from the grid cache (the runtime's reader and ``fit``), corrupted on
each model's grid in [0, 1] (before the card's normalisation), then run through the cascade exactly as
on clean data: gate (classifier + TTA), segmenter (+ TTA) on every image, and the cascade's decision rule
(gate threshold, triplet thresholds) from the evaluated model's thresholds. Per evaluation set:

* ``auc`` — classifier ROC AUC;
* ``dice_per_image`` — the cascade's mean Dice per image (1 when prediction and truth are both empty); on
  a set with few positives this mostly measures the gate (a negative image is right when it is empty);
* ``dice_positives`` — the segmenter's mean Dice on the positive images with the gate open (the
  oracle gate): the segmenter's own robustness, apart from the gate's.

**Sign:** ΔAUC = AUC(clean) − AUC(corrupted) and ΔDice = Dice(clean) − Dice(corrupted): a *positive* Δ
is a loss under the corruption, a negative one an improvement.

The corruption's random parts (noise, blur direction) are seeded per (seed, corruption, severity, image),
so a table is reproducible and every model sees the same corrupted images.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

from triage import metrics
from triage.bundle import Thresholds
from triage.cascade.postprocess import triplet_mask
from triage.cascade.preprocess import normalise
from triage.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from triage.data.dataset import list_dataset
from triage.data.gridcache import GridSet, GridSpec, ensure_grids
from triage.evaluation.models import Cascade

CLEAN = ("clean", 0)


@dataclass(frozen=True)
class Cell:
    """One evaluation set: ``corruption`` ("clean" for the clean set), ``severity`` (0 for clean)."""

    corruption: str
    severity: int
    auc: float | None
    dice_per_image: float | None
    delta_auc: float | None  # clean − corrupted (positive = worse)
    delta_dice: float | None  # clean − corrupted (positive = worse)
    dice_positives: float | None = None
    delta_dice_positives: float | None = None


@dataclass
class CorruptionTable:
    label: str
    images: int
    positives: int
    cells: list[Cell]
    seed: int
    tta: bool

    def cell(self, corruption: str, severity: int) -> Cell:
        for c in self.cells:
            if (c.corruption, c.severity) == (corruption, severity):
                return c
        raise KeyError((corruption, severity))

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.label,
            "images": self.images,
            "positives": self.positives,
            "seed": self.seed,
            "tta": self.tta,
            "sign": "delta = clean - corrupted; positive = worse under the corruption",
            "cells": [asdict(c) for c in self.cells],
        }


def _dice(pred: NDArray[np.bool_], truth: NDArray[np.bool_]) -> float:
    return float(metrics.dice_per_image(pred[None], truth[None])[0])


def _sets(corruptions: Sequence[str], severities: Sequence[int]) -> list[tuple[str, int]]:
    for name in corruptions:
        if name not in CORRUPTIONS:
            raise ValueError(f"unknown corruption {name!r}; valid: {', '.join(CORRUPTIONS)}")
    for s in severities:
        if s not in SEVERITIES:
            raise ValueError(f"corruption severity must be one of {SEVERITIES}, got {s!r}")
    return [CLEAN, *((c, s) for c in corruptions for s in severities)]


def evaluate_corruptions(
    cascade: Cascade,
    data: Path,
    cache_dir: Path | None = None,
    *,
    grids: tuple[GridSet | None, GridSet | None] | None = None,
    rows: Sequence[int] | None = None,
    thresholds: Thresholds | None = None,
    corruptions: Sequence[str] = CORRUPTIONS,
    severities: Sequence[int] = SEVERITIES,
    use_tta: bool = True,
    batch_size: int = 16,
    seed: int = 0,
    workers: int = 1,
    on_total: Callable[[int], None] | None = None,
    on_done: Callable[[int], None] | None = None,
) -> CorruptionTable:
    """The 1 + len(corruptions)·len(severities) evaluation sets; ``on_done(k)`` after k images.

    ``grids`` (classifier grid, segmenter grid) and ``rows`` reuse caches already built (``triage
    evaluate``); otherwise ``data`` is listed and cached here. ``thresholds`` default to the cascade's.
    """
    sets = _sets(corruptions, severities)
    th = thresholds or cascade.thresholds
    by_role: dict[str, GridSet] = {}
    if grids is not None:
        for role, grid in zip(("classifier", "segmenter"), grids, strict=True):
            if grid is not None:
                by_role[role] = grid
    else:
        listing = list_dataset(data)
        specs = [s for s in (cascade.classifier, cascade.segmenter) if s is not None]
        built = ensure_grids(
            listing, [GridSpec(s.input_size, s.resize) for s in specs], cache_dir, workers=workers
        )
        by_role = {s.role: g for s, g in zip(specs, built, strict=True)}
    if not by_role:
        raise ValueError("nothing to evaluate: the model has neither a classifier nor a segmenter")
    any_grid = next(iter(by_role.values()))
    if rows is None:
        bad = {p.item for p in any_grid.problems}
        rows = [i for i, image_id in enumerate(any_grid.ids) if image_id not in bad]
    rows = list(rows)
    if not rows:
        raise ValueError(f"{data}: no usable labelled images to evaluate")
    labels = any_grid.labels[rows] > 0
    if on_total is not None:
        on_total(len(rows) * len(sets))
    results: dict[tuple[str, int], tuple[float | None, float | None, float | None]] = {}
    for index, (name, severity) in enumerate(sets):
        probs: list[float] = []
        dices: list[float] = []
        oracle: list[float] = []
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]

            def prepared(
                role: str,
                chunk: list[int] = chunk,
                index: int = index,
                name: str = name,
                severity: int = severity,
            ) -> NDArray[np.float32]:
                grid, spec = (
                    by_role[role],
                    (cascade.classifier if role == "classifier" else cascade.segmenter),
                )
                assert spec is not None
                out = []
                for r in chunk:
                    img = grid.image(r)
                    if severity:
                        img = corrupt(img, name, severity, np.random.default_rng([seed, index, r]))
                    out.append(normalise(img, spec))
                return np.stack(out)

            if cascade.classifier is not None and "classifier" in by_role:
                prob, _ = cascade.gate(prepared("classifier"), use_tta)
            else:
                prob = np.ones(len(chunk), np.float32)
            probs.extend(float(p) for p in prob)
            if cascade.segmenter is not None and "segmenter" in by_role:
                seg = cascade.segment(prepared("segmenter"), use_tta)
                seg_grid = by_role["segmenter"]
                for k, r in enumerate(chunk):
                    gated = float(prob[k]) >= th.gate
                    mask = triplet_mask(seg[k], th) if gated else np.zeros(seg[k].shape, bool)
                    truth = seg_grid.mask(r)
                    dices.append(_dice(mask, truth))
                    if truth.any():
                        oracle.append(_dice(triplet_mask(seg[k], th), truth))
            if on_done is not None:
                on_done(len(chunk))
        auc = None
        if cascade.classifier is not None and labels.any() and not labels.all():
            auc = metrics.roc_auc(np.asarray(probs), labels)
        results[(name, severity)] = (
            auc,
            float(np.mean(dices)) if dices else None,
            float(np.mean(oracle)) if oracle else None,
        )
    clean_auc, clean_dice, clean_oracle = results[CLEAN]
    cells = []
    for name, severity in sets:
        auc, dice, pos = results[(name, severity)]
        cells.append(
            Cell(
                corruption=name,
                severity=severity,
                auc=auc,
                dice_per_image=dice,
                delta_auc=None if auc is None or clean_auc is None else clean_auc - auc,
                delta_dice=None if dice is None or clean_dice is None else clean_dice - dice,
                dice_positives=pos,
                delta_dice_positives=None if pos is None or clean_oracle is None else clean_oracle - pos,
            )
        )
    return CorruptionTable(cascade.label, len(rows), int(labels.sum()), cells, seed, use_tta)


def _fmt(value: float | None, signed: bool = True) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def markdown(table: CorruptionTable) -> str:
    """ΔAUC and ΔDice tables (rows: corruptions, columns: severities) with the clean values above."""
    clean = table.cell(*CLEAN)
    names = list(dict.fromkeys(c.corruption for c in table.cells if c.severity))
    sevs = sorted({c.severity for c in table.cells if c.severity})
    lines = [
        f"Clean: AUC {_fmt(clean.auc, False)}, cascade Dice per image {_fmt(clean.dice_per_image, False)}, "
        f"segmenter Dice on positives (gate open) {_fmt(clean.dice_positives, False)} "
        f"({table.images} images, {table.positives} positive). Δ = clean − corrupted: positive = worse.",
        "",
    ]
    for title, key in (
        ("ΔAUC", "delta_auc"),
        ("ΔDice per image (cascade)", "delta_dice"),
        ("ΔDice, positives, gate open", "delta_dice_positives"),
    ):
        if all(getattr(c, key) is None for c in table.cells if c.severity):
            continue
        lines.append(f"| {title} | " + " | ".join(f"severity {s}" for s in sevs) + " |")
        lines.append("| --- | " + " | ".join("---:" for _ in sevs) + " |")
        for name in names:
            values = [_fmt(getattr(table.cell(name, s), key)) for s in sevs]
            lines.append(f"| {name} | " + " | ".join(values) + " |")
        lines.append("")
    return "\n".join(lines)


def _colour(value: float | None, scale: float) -> tuple[int, int, int]:
    """Diverging: white at 0, red for positive Δ (worse), blue for negative (better); grey for none."""
    if value is None or not math.isfinite(value):
        return (200, 200, 200)
    t = max(-1.0, min(1.0, value / scale))
    if t >= 0:
        return (255, round(255 * (1 - t)), round(255 * (1 - t)))
    return (round(255 * (1 + t)), round(255 * (1 + t)), 255)


def render_heatmap(table: CorruptionTable, path: Path | None = None, cell_px: int = 84) -> NDArray[np.uint8]:
    """A PNG picture of the ΔAUC and ΔDice tables side by side (colour = Δ, text = value); written to
    ``path`` when given. The colour scale is symmetric, ±max |Δ| of the panel (at least 0.02)."""
    names = list(dict.fromkeys(c.corruption for c in table.cells if c.severity))
    sevs = sorted({c.severity for c in table.cells if c.severity})
    # ASCII only: Pillow's built-in font has no Greek delta or minus sign
    panels = [
        (t, k)
        for t, k in (
            ("delta AUC = clean - corrupted", "delta_auc"),
            ("delta Dice/image (cascade)", "delta_dice"),
            ("delta Dice, positives, gate open", "delta_dice_positives"),
        )
        if any(getattr(c, k) is not None for c in table.cells if c.severity)
    ]
    font = _font(14)
    small = _font(12)
    label_w, head_h, gap = 110, 52, 24
    panel_w = label_w + cell_px * len(sevs)
    width = gap + len(panels) * (panel_w + gap)
    height = head_h + cell_px // 2 * len(names) + 48
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    row_h = cell_px // 2
    for p, (title, key) in enumerate(panels):
        x0 = gap + p * (panel_w + gap)
        values = [getattr(c, key) for c in table.cells if c.severity and getattr(c, key) is not None]
        scale = max([0.02, *(abs(v) for v in values)])
        draw.text((x0, 6), title, fill=(0, 0, 0), font=font)
        for j, s in enumerate(sevs):
            draw.text((x0 + label_w + j * cell_px + 8, 30), f"sev {s}", fill=(0, 0, 0), font=small)
        for i, name in enumerate(names):
            y = head_h + i * row_h
            draw.text((x0, y + row_h // 2 - 8), name, fill=(0, 0, 0), font=small)
            for j, s in enumerate(sevs):
                value = getattr(table.cell(name, s), key)
                box = (x0 + label_w + j * cell_px, y, x0 + label_w + (j + 1) * cell_px - 2, y + row_h - 2)
                draw.rectangle(box, fill=_colour(value, scale))
                draw.text((box[0] + 10, box[1] + row_h // 2 - 9), _fmt(value), fill=(0, 0, 0), font=small)
        draw.text(
            (x0, height - 40), f"colour scale +/-{scale:.3f}; red = worse", fill=(60, 60, 60), font=small
        )
    clean = table.cell(*CLEAN)
    draw.text(
        (gap, height - 22),
        f"clean AUC {_fmt(clean.auc, False)}, Dice/image "
        f"{_fmt(clean.dice_per_image, False)}, {table.images} images, {table.label}"[:140],
        fill=(60, 60, 60),
        font=small,
    )
    out = np.asarray(img, dtype=np.uint8)
    if path is not None:
        from triage.outputs.atomic import atomic_save_png

        atomic_save_png(path, out)
    return out


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError):
        return ImageFont.load_default()


def write_report(table: CorruptionTable, out: Path) -> dict[str, Path]:
    """corruptions.json, corruptions.md and corruptions.png in ``out``; returns their paths."""
    from triage.outputs.atomic import atomic_write_bytes

    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "corruptions.json", "md": out / "corruptions.md", "png": out / "corruptions.png"}
    atomic_write_bytes(paths["json"], (json.dumps(table.to_dict(), indent=2) + "\n").encode())
    atomic_write_bytes(paths["md"], (markdown(table) + "\n").encode())
    render_heatmap(table, paths["png"])
    return paths
