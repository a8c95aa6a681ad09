"""Patient-level stratified K-fold splits.

Every image of a patient lands in the same fold (no patient leaks between train
and validation), and each fold's positive fraction approximates the overall one.
Folds are stored as CSV with columns ``image_id,patient_id,label,fold``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

__all__ = ["FOLD_COLUMNS", "FoldRow", "make_folds", "read_folds_csv", "write_folds_csv"]

FOLD_COLUMNS = ("image_id", "patient_id", "label", "fold")


class FoldRow(NamedTuple):
    """One row of a folds CSV."""

    image_id: str
    patient_id: str
    label: int
    fold: int


def _check_table(table: Sequence[tuple[str, str, int]]) -> None:
    seen: set[str] = set()
    for image_id, _patient, label in table:
        if image_id in seen:
            raise ValueError(f"duplicate image_id {image_id!r}")
        seen.add(image_id)
        if label not in (0, 1):
            raise ValueError(f"image {image_id!r}: label must be 0 or 1, got {label!r}")


def make_folds(table: Sequence[tuple[str, str, int]], k: int = 5, seed: int = 0) -> dict[str, int]:
    """Assign each image to one of ``k`` folds, grouped by patient, stratified by label.

    Uses scikit-learn's ``StratifiedGroupKFold(n_splits=k, shuffle=True,
    random_state=seed)`` with groups = patient_id and y = label. The table is
    sorted by image_id first, so the result depends on its content and ``seed``,
    not on row order.

    Args:
        table: (image_id, patient_id, label) rows; label 0/1; image ids unique.
        k: number of folds, 2 <= k <= number of distinct patients.
        seed: shuffling seed.

    Returns:
        image_id -> fold index in [0, k).

    Raises:
        ValueError: for k out of range (naming k and the patient count), a
            duplicate image_id, or a label other than 0/1.
    """
    _check_table(table)
    n_patients = len({patient for _, patient, _ in table})
    if k < 2 or k > n_patients:
        raise ValueError(f"k must satisfy 2 <= k <= number of patients ({n_patients}), got k={k}")
    rows = sorted(table, key=lambda r: r[0])
    ids = [r[0] for r in rows]
    groups = np.array([r[1] for r in rows])
    y = np.array([r[2] for r in rows], dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    folds: dict[str, int] = {}
    for fold, (_, val_idx) in enumerate(splitter.split(np.zeros(len(rows)), y, groups)):
        for i in val_idx:
            folds[ids[i]] = fold
    return folds


def write_folds_csv(
    path: str | Path, table: Iterable[tuple[str, str, int]], folds: Mapping[str, int]
) -> None:
    """Write ``image_id,patient_id,label,fold`` rows, one per table row.

    Raises:
        KeyError: when an image of ``table`` has no fold.
    """
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(FOLD_COLUMNS)
        for image_id, patient_id, label in table:
            if image_id not in folds:
                raise KeyError(f"image {image_id!r} has no fold assigned")
            writer.writerow((image_id, patient_id, int(label), folds[image_id]))


def read_folds_csv(path: str | Path) -> list[FoldRow]:
    """Read a folds CSV written by :func:`write_folds_csv`.

    Raises:
        ValueError: missing columns (naming found and expected), a non-integer or
            out-of-range label/fold (naming the line), a duplicate image_id, or a
            patient in more than one fold (a leak).
    """
    path = Path(path)
    rows: list[FoldRow] = []
    patient_fold: dict[str, int] = {}
    seen: set[str] = set()
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        found = [f.strip() for f in reader.fieldnames or []]
        if any(c not in found for c in FOLD_COLUMNS):
            raise ValueError(f"{path}: found columns {found}, expected {list(FOLD_COLUMNS)}")
        reader.fieldnames = found
        for rec in reader:
            where = f"{path}:{reader.line_num}"
            image_id, patient_id = rec["image_id"].strip(), rec["patient_id"].strip()
            try:
                label, fold = int(rec["label"]), int(rec["fold"])
            except (TypeError, ValueError):
                raise ValueError(
                    f"{where}: label and fold must be integers, got {rec['label']!r}, {rec['fold']!r}"
                ) from None
            if label not in (0, 1) or fold < 0:
                raise ValueError(f"{where}: label must be 0/1 and fold >= 0, got label={label}, fold={fold}")
            if image_id in seen:
                raise ValueError(f"{where}: duplicate image_id {image_id!r}")
            seen.add(image_id)
            prev = patient_fold.setdefault(patient_id, fold)
            if prev != fold:
                raise ValueError(f"{where}: patient {patient_id!r} appears in folds {prev} and {fold}")
            rows.append(FoldRow(image_id, patient_id, label, fold))
    return rows
