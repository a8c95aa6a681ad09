"""A PNG grid of synthetic studies with pneumothorax outlines, to judge realism at a glance.

Each tile is read back from its DICOM file through the product's own reader (rescale → VOI →
MONOCHROME1 inversion), so the sheet also shows that every photometric/rescale variant displays
the right way round. Positives are chosen to span the size range, from obvious to subtle.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import binary_erosion

from triage.io.dicom import read_dicom
from triage.synth.dataset import read_metadata

OUTLINE = (255, 40, 40)
DRAIN = (60, 170, 255)


def _pick(rows: list[dict[str, str]], n: int) -> list[dict[str, str]]:
    positives = sorted((r for r in rows if r["label"] == "1"), key=lambda r: -float(r["area_fraction"]))
    negatives = [r for r in rows if r["label"] != "1"]
    n_pos = min(len(positives), max(n - len(negatives), math.ceil(0.75 * n)))
    idx: list[int] = (
        np.unique(np.round(np.linspace(0, len(positives) - 1, n_pos)).astype(int)).tolist() if n_pos else []
    )
    chosen = [positives[int(i)] for i in idx]
    chosen += negatives[: n - len(chosen)]
    return chosen


def _caption(row: dict[str, str]) -> str:
    if row["label"] == "1":
        side = "R" if row["side"] == "right" else "L"
        finding = f"PTX {side} {row['location']} {100 * float(row['area_fraction']):.2f}%"
    else:
        finding = "no PTX"
    extras = [row["view"], row["modality"], "M1" if row["photometric"] == "MONOCHROME1" else "M2"]
    if row["drain"] == "1":
        extras.append("drain")
    return f"{finding} | {' '.join(extras)}"


def _tile(
    root: Path,
    row: dict[str, str],
    tile: int,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    outline: bool,
) -> Image.Image:
    image = read_dicom(root / row["dicom"]).pixels
    gray = Image.fromarray(np.round(image * 255).astype(np.uint8)).resize(
        (tile, tile), Image.Resampling.LANCZOS
    )
    rgb = np.stack([np.asarray(gray)] * 3, axis=-1)
    if outline and row["mask"]:
        mask = np.asarray(Image.open(root / row["mask"]).resize((tile, tile), Image.Resampling.NEAREST)) > 0
        rgb[mask & ~binary_erosion(mask)] = OUTLINE
    canvas = Image.new("RGB", (tile, tile + 22), (0, 0, 0))
    canvas.paste(Image.fromarray(rgb), (0, 0))
    ImageDraw.Draw(canvas).text((4, tile + 3), _caption(row), fill=(235, 235, 235), font=font)
    return canvas


def render_contact_sheet(
    root: Path, path: Path, n: int = 16, columns: int = 4, tile: int = 320, outline: bool = True
) -> Path:
    """Write a contact sheet of up to `n` studies of the synthetic set at `root` to the PNG `path`."""
    rows = _pick(read_metadata(root), n)
    if not rows:
        raise ValueError(f"no studies in {root / 'metadata.csv'}")
    font = ImageFont.load_default(size=13)
    tiles = [_tile(root, r, tile, font, outline) for r in rows]
    cols = min(columns, len(tiles))
    nrows = math.ceil(len(tiles) / cols)
    th = tiles[0].height
    sheet = Image.new("RGB", (cols * tile + (cols - 1) * 4, nrows * th + (nrows - 1) * 4), (40, 40, 40))
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % cols) * (tile + 4), (i // cols) * (th + 4)))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
