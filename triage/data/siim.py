"""Readers and writers for the SIIM-ACR pneumothorax label CSVs and DICOM tree.

Two CSV dialects exist, and both are accepted:

* stage 1 ``train-rle.csv``: header ``ImageId, EncodedPixels`` with a leading space
  in the header *and* in every value (``1.2.276..., -1``, ``1.2.276..., 175349 7 ...``);
* stage 2 ``stage_2_train.csv``: header ``ImageId,EncodedPixels``, no spaces.

An image with several pneumothoraces has one row per region; the masks are the
union of the rows. ``-1`` marks an image without pneumothorax. RLE strings use the
SIIM relative, column-major encoding (see :mod:`triage.data.rle`).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from triage.data.rle import EMPTY_RLE, RLEError, rle_decode, rle_encode

__all__ = [
    "SIIMFormatError",
    "decode_image_masks",
    "find_dicoms",
    "read_rle_csv",
    "write_rle_csv",
]

_EXPECTED_COLUMNS = ("ImageId", "EncodedPixels")
# 8-connectivity: diagonal neighbours belong to the same region.
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


class SIIMFormatError(ValueError):
    """A SIIM-ACR label file or DICOM tree that does not follow the expected format."""


def _is_negative(rle: str) -> bool:
    return rle in ("", EMPTY_RLE)


def read_rle_csv(path: str | Path) -> dict[str, list[str]]:
    """Read a stage-1 or stage-2 SIIM-ACR label CSV.

    Whitespace around headers and values and a UTF-8 BOM are ignored; extra
    columns are ignored. An empty EncodedPixels value counts as ``-1``.

    Args:
        path: the CSV file.

    Returns:
        ImageId -> list of RLE strings (one per row, file order; several for an
        image with several regions), an empty list for negative images. Keys are
        in order of first appearance. RLE syntax is not checked here; see
        :func:`decode_image_masks`.

    Raises:
        SIIMFormatError: missing columns (naming found and expected ones), a row
            with too few fields or an empty ImageId (naming the line), or an image
            listed both as ``-1`` and with a positive RLE (naming the ImageId).
    """
    path = Path(path)
    positives: dict[str, list[str]] = {}
    negatives: set[str] = set()
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise SIIMFormatError(f"{path}: empty file; expected header {','.join(_EXPECTED_COLUMNS)}")
        found = [h.strip().lstrip("\ufeff") for h in header]
        missing = [c for c in _EXPECTED_COLUMNS if c not in found]
        if missing:
            raise SIIMFormatError(
                f"{path}: missing column(s) {missing}; found columns {found}, "
                f"expected {list(_EXPECTED_COLUMNS)}"
            )
        id_col, rle_col = (found.index(c) for c in _EXPECTED_COLUMNS)
        for row in reader:
            if not row or all(not f.strip() for f in row):
                continue  # blank line
            line = reader.line_num
            if len(row) <= max(id_col, rle_col):
                raise SIIMFormatError(f"{path}:{line}: expected at least {len(found)} fields, got {row!r}")
            image_id = row[id_col].strip()
            rle = row[rle_col].strip()
            if not image_id:
                raise SIIMFormatError(f"{path}:{line}: empty ImageId")
            if _is_negative(rle):
                negatives.add(image_id)
                positives.setdefault(image_id, [])
            else:
                positives.setdefault(image_id, []).append(rle)
            if image_id in negatives and positives[image_id]:
                raise SIIMFormatError(
                    f"{path}:{line}: ImageId {image_id} is listed both as -1 (no pneumothorax) "
                    "and with a positive RLE"
                )
    return positives


def decode_image_masks(rles: Sequence[str], height: int, width: int, image_id: str) -> NDArray[np.bool_]:
    """Decode and union all RLE rows of one image.

    Args:
        rles: RLE strings of one image (as returned by :func:`read_rle_csv`);
            empty for a negative image.
        height: image height H in pixels.
        width: image width W in pixels.
        image_id: the ImageId, used in error messages.

    Returns:
        (H, W) bool mask, the union of all regions.

    Raises:
        SIIMFormatError: any malformed RLE, with the ImageId and the row index.
    """
    mask = np.zeros((height, width), dtype=np.bool_)
    for i, rle in enumerate(rles):
        try:
            mask |= rle_decode(rle, height, width)
        except RLEError as err:
            raise SIIMFormatError(f"ImageId {image_id} (RLE row {i}): {err}") from err
    return mask


def write_rle_csv(
    path: str | Path,
    rows: Iterable[tuple[str, NDArray[np.bool_] | NDArray[np.integer]]],
    *,
    stage: Literal[1, 2] = 1,
) -> None:
    """Write masks as a SIIM-ACR label CSV.

    Each mask is split into 8-connected regions (diagonal neighbours join a
    region); each region is written as its own row, in raster order of its first
    pixel, as the competition files do. An empty mask is one ``-1`` row.

    Args:
        path: output file (overwritten).
        rows: (ImageId, (H, W) bool/integer mask) pairs; nonzero = pneumothorax.
        stage: 1 for ``train-rle.csv`` format (header ``ImageId, EncodedPixels``,
            each value preceded by one space), 2 for ``stage_2_train.csv``
            format (``ImageId,EncodedPixels``, no spaces).

    Raises:
        ValueError: for a stage other than 1 or 2, or an ImageId that is empty
            or contains a comma, quote or line break.
    """
    write_rle_rows(path, ((image_id, mask_to_rles(mask)) for image_id, mask in rows), stage=stage)


def mask_to_rles(mask: NDArray[np.bool_] | NDArray[np.integer]) -> list[str]:
    """One competition RLE string per 8-connected region, in raster order; ``["-1"]`` if empty."""
    labels, n_regions = ndimage.label(np.asarray(mask) != 0, structure=_EIGHT_CONNECTED)
    if n_regions == 0:
        return [EMPTY_RLE]
    return [rle_encode(labels == region) for region in range(1, n_regions + 1)]


def write_rle_rows(
    path: str | Path, rows: Iterable[tuple[str, Sequence[str]]], *, stage: Literal[1, 2] = 1
) -> None:
    """Write already-encoded RLE strings (one CSV row each) in the stage-1 or stage-2 format."""
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage!r}")
    sep = ", " if stage == 1 else ","
    lines = [sep.join(_EXPECTED_COLUMNS)]
    for image_id, rles in rows:
        if not image_id or any(c in image_id for c in ',"\r\n'):
            raise ValueError(
                f"ImageId {image_id!r} must be non-empty and contain no comma, quote or line break"
            )
        lines.extend(f"{image_id}{sep}{rle}" for rle in rles)
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8", newline="")


def find_dicoms(root: str | Path) -> dict[str, Path]:
    """Map SOPInstanceUID -> DICOM path in a SIIM-ACR tree.

    The layout is ``root/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``
    (e.g. ``dicom-images-train``); every ``*.dcm`` file at any depth is found, and
    its file name stem is taken as the SOPInstanceUID (= the CSV ImageId). The
    files are not opened.

    Raises:
        FileNotFoundError: when ``root`` is not a directory.
        SIIMFormatError: when two files share a stem, naming both paths.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"DICOM root {root} is not a directory")
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*.dcm")):
        if not path.is_file():
            continue
        other = found.setdefault(path.stem, path)
        if other != path:
            raise SIIMFormatError(f"duplicate SOPInstanceUID {path.stem}: {other} and {path}")
    return found
