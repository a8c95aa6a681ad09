"""A labelled data set on disk — the SIIM-ACR layout or the folder format — listed without decoding pixels,
with every label problem found on the way reported per item.

Layouts (detected in this order)::

    SIIM-ACR   DIR/train-rle.csv (or stage_2_train.csv) + DICOM files anywhere under DIR
               (DIR/dicom-images-train/<study>/<series>/<SOP>.dcm); ImageId = the file name stem.
               `triage synth` writes this, plus lungs/, heatmaps/ and metadata.csv.
    folder     DIR/images/<id>.png, DIR/masks/<id>.png (missing = negative), DIR/lungs/<id>.png.

Optional ``DIR/metadata.csv`` (``image_id`` column): ``patient_id`` for patient-level folds and any
stratum columns (``size_stratum``, ``drain``, ``view``, ``photometric``, ...). Without patient ids, the
DICOM header's PatientID is used (hashed; read when the images are decoded), and in the folder format
each image counts as its own patient.

Problems found here (codes of :class:`LabelProblem`): ``no_image`` (a label row or mask file whose image
does not exist), ``no_label`` (an image with no label row), ``duplicate_id``. Decoding finds more
(``unreadable``, ``bad_rle``, ``mask_size``, ``lungs_size``; :mod:`triage.data.gridcache`).
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from triage.data.siim import SIIMFormatError, read_rle_csv

__all__ = [
    "PROBLEM_CODES",
    "DataItem",
    "DataListing",
    "LabelProblem",
    "list_dataset",
    "patient_key",
]

LABEL_CSVS = ("train-rle.csv", "stage_2_train.csv")
METADATA = "metadata.csv"
PROBLEM_CODES = {
    "no_image": "a label row or mask file names an image that does not exist",
    "no_label": "an image has no label row",
    "duplicate_id": "two images share one id",
    "unreadable": "the image cannot be decoded",
    "bad_rle": "the RLE does not fit the image",
    "mask_size": "the mask's size differs from the image's",
    "lungs_size": "the lung mask's size differs from the image's",
    "heatmap_size": "the heatmap's size differs from the image's",
}
Kind = Literal["siim", "folder"]


@dataclass(frozen=True)
class LabelProblem:
    """One item that cannot be used as labelled: its id, a code of :data:`PROBLEM_CODES`, details."""

    item: str
    code: str
    message: str


@dataclass(frozen=True)
class DataItem:
    """One labelled image. ``rles`` (SIIM) or ``mask`` (folder) carry the pneumothorax label; ``label`` is
    1 when there is a pneumothorax. ``patient`` is an opaque key ("" = unknown yet: taken from the DICOM
    header when decoded). ``strata``: metadata.csv's columns for this image, as strings."""

    id: str
    image: Path
    label: int  # folder format: -1 until the mask's pixels are read (an empty mask file is a negative)
    rles: tuple[str, ...] | None = None
    mask: Path | None = None
    lungs: Path | None = None
    heatmap: Path | None = None
    patient: str = ""
    strata: dict[str, str] = field(default_factory=dict)

    @property
    def is_dicom(self) -> bool:
        return self.image.suffix.lower() == ".dcm"


@dataclass(frozen=True)
class DataListing:
    root: Path
    kind: Kind
    items: list[DataItem]
    problems: list[LabelProblem]

    def problem_counts(self) -> Counter[str]:
        return Counter(p.code for p in self.problems)

    def without(self, bad: Iterable[str]) -> DataListing:
        drop = set(bad)
        return DataListing(
            self.root, self.kind, [it for it in self.items if it.id not in drop], self.problems
        )


def patient_key(raw: str) -> str:
    """An opaque, stable key for a patient identifier read from a DICOM header (never logged raw)."""
    return "p-" + hashlib.sha256(raw.encode("utf-8")).hexdigest()[:16] if raw else ""


def _metadata(root: Path) -> dict[str, dict[str, str]]:
    path = root / METADATA
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if "image_id" not in (reader.fieldnames or []):
            raise ValueError(f"{path}: needs an image_id column, found {reader.fieldnames}")
        return {row["image_id"].strip(): {k: (v or "").strip() for k, v in row.items()} for row in reader}


# metadata.csv columns that are strata (if present); the rest (paths, UIDs, numbers) are not.
STRATUM_COLUMNS = ("size_stratum", "drain", "view", "photometric", "modality", "location", "side", "ecg")


def _strata(meta: dict[str, str]) -> dict[str, str]:
    return {k: meta[k] for k in STRATUM_COLUMNS if meta.get(k, "") != ""}


def _optional(path: Path) -> Path | None:
    return path if path.is_file() else None


def _list_siim(root: Path, csv_path: Path) -> DataListing:
    try:
        labels = read_rle_csv(csv_path)
    except SIIMFormatError as exc:
        raise ValueError(str(exc)) from exc
    meta = _metadata(root)
    images_root = root / "dicom-images-train"
    problems: list[LabelProblem] = []
    found: dict[str, Path] = {}
    for path in sorted((images_root if images_root.is_dir() else root).rglob("*.dcm")):
        other = found.setdefault(path.stem, path)
        if other != path:
            problems.append(LabelProblem(path.stem, "duplicate_id", f"two DICOM files named {path.stem}.dcm"))
    duplicates = {p.item for p in problems}
    items: list[DataItem] = []
    for image_id, rles in labels.items():
        if image_id not in found:
            problems.append(
                LabelProblem(image_id, "no_image", f"{csv_path.name} lists it; no {image_id}.dcm")
            )
            continue
        if image_id in duplicates:
            continue
        m = meta.get(image_id, {})
        items.append(
            DataItem(
                id=image_id,
                image=found[image_id],
                label=int(bool(rles)),
                rles=tuple(rles),
                lungs=_optional(root / "lungs" / f"{image_id}.png"),
                heatmap=_optional(root / "heatmaps" / f"{image_id}.png"),
                patient=m.get("patient_id", ""),
                strata=_strata(m),
            )
        )
    for image_id in sorted(set(found) - set(labels) - duplicates):
        problems.append(LabelProblem(image_id, "no_label", f"{image_id}.dcm has no row in {csv_path.name}"))
    return DataListing(root, "siim", items, problems)


def _stems(directory: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(directory.glob("*.png")) if p.is_file()} if directory.is_dir() else {}


def _list_folder(root: Path) -> DataListing:
    if not (root / "masks").is_dir():
        raise ValueError(
            f"{root} has images/ but no masks/: an unlabelled folder cannot be trained or evaluated on "
            "(add masks/<id>.png for positives; a missing mask means negative)"
        )
    meta = _metadata(root)
    images, masks = _stems(root / "images"), _stems(root / "masks")
    lungs, heatmaps = _stems(root / "lungs"), _stems(root / "heatmaps")
    problems = [
        LabelProblem(stem, "no_image", f"{sub}/{stem}.png has no images/{stem}.png")
        for sub, files in (("masks", masks), ("lungs", lungs), ("heatmaps", heatmaps))
        for stem in sorted(set(files) - set(images))
    ]
    items = []
    for stem, path in images.items():
        m = meta.get(stem, {})
        items.append(
            DataItem(
                id=stem,
                image=path,
                label=-1 if stem in masks else 0,  # -1: decided from the mask's pixels when decoded
                mask=masks.get(stem),
                lungs=lungs.get(stem),
                heatmap=heatmaps.get(stem),
                patient=m.get("patient_id", "") or f"image:{stem}",
                strata=_strata(m),
            )
        )
    return DataListing(root, "folder", items, problems)


def list_dataset(root: Path) -> DataListing:
    """List a data set (layout detected, see the module docstring); ValueError naming what is missing."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"--data {root}: no such folder")
    for name in LABEL_CSVS:
        if (root / name).is_file():
            return _list_siim(root, root / name)
    if (root / "images").is_dir():
        return _list_folder(root)
    raise ValueError(
        f"--data {root}: neither the SIIM-ACR layout ({' or '.join(LABEL_CSVS)} + DICOM files) nor the "
        "folder format (images/, masks/) was found"
    )
