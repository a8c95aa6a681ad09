"""A synthetic data set in the SIIM-ACR layout, written by parallel workers.

Layout of OUT::

    dicom-images-train/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm
    train-rle.csv        stage-1 competition format (ImageId = SOPInstanceUID; "-1" for negatives)
    metadata.csv         one row per image: label, size stratum, side, drain, view, photometric, paths …
    masks/<SOP>.png      pneumothorax mask (0/255), the same pixels as train-rle.csv
    lungs/<SOP>.png      lung fields (0/255): the "relevant region" for saliency training
    heatmaps/<SOP>.png   reading heatmap (0..255)
    drains/<SOP>.png     chest-drain pixels (0/255), only for images with a drain
    corner_markers/<SOP>.png  the positive control's corner marker (0/255), only where one is drawn
                         (`corner_marker_given_positive/negative` > 0)
    synth.json           the request and the phantom settings that made the set
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from triage import __version__
from triage.data.siim import write_rle_rows
from triage.synth.config import ConfigError, PhantomConfig
from triage.synth.study import DICOM_DIR, MASK_DIRS, StudyPlan, make_study
from triage.system import usable_cores

MANIFEST = "synth.json"
RLE_CSV = "train-rle.csv"
METADATA_CSV = "metadata.csv"
MIN_SIZE, MAX_SIZE = 128, 4096
_OURS = [DICOM_DIR, *MASK_DIRS.values(), RLE_CSV, METADATA_CSV, MANIFEST]


@dataclass(frozen=True)
class SynthRequest:
    """What `triage synth` was asked for; validated on construction."""

    out: Path
    studies: int
    positive_fraction: float = 0.22
    size: int = 1024
    seed: int = 0
    config: PhantomConfig = field(default_factory=PhantomConfig)

    def __post_init__(self) -> None:
        if self.studies < 1:
            raise ConfigError(f"--studies must be at least 1, got {self.studies}")
        if not 0.0 <= self.positive_fraction <= 1.0:
            raise ConfigError(f"--positive-fraction must be in [0, 1], got {self.positive_fraction}")
        if not MIN_SIZE <= self.size <= MAX_SIZE:
            raise ConfigError(f"--size must be in [{MIN_SIZE}, {MAX_SIZE}] pixels, got {self.size}")
        if self.seed < 0:
            raise ConfigError(f"--seed must be a non-negative integer, got {self.seed}")


def plan_studies(req: SynthRequest) -> list[StudyPlan]:
    """Assign patients (1-3 studies each) and labels (exactly round(N·fraction) positives)."""
    rng = np.random.default_rng([req.seed, 0])
    n_pos = round(req.studies * req.positive_fraction)
    labels = np.zeros(req.studies, bool)
    labels[rng.permutation(req.studies)[:n_pos]] = True
    plans: list[StudyPlan] = []
    patient, visit, remaining = -1, 0, 0
    for i in range(req.studies):
        if remaining == 0:
            patient, visit = patient + 1, 0
            remaining = int(rng.choice([1, 2, 3], p=[0.7, 0.2, 0.1]))
        plans.append(StudyPlan(req.seed, i, patient, visit, bool(labels[i]), req.size, req.config, req.out))
        visit, remaining = visit + 1, remaining - 1
    return plans


def prepare_output(out: Path, force: bool) -> None:
    """Refuse to write into a non-empty folder unless `force` and the folder holds an earlier synth set.

    With `force`, only what an earlier `triage synth` wrote is removed; nothing else is touched.
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output {out} exists and is not a folder")
    if not out.exists() or not any(out.iterdir()):
        out.mkdir(parents=True, exist_ok=True)
        return
    if not force:
        raise ConfigError(
            f"output folder {out} is not empty; choose another or pass --force to replace "
            f"an earlier synthetic set there"
        )
    if not (out / MANIFEST).exists():
        raise ConfigError(
            f"output folder {out} is not empty and holds no {MANIFEST}: refusing to delete "
            f"files that triage synth did not write"
        )
    for name in _OURS:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def _run(plans: list[StudyPlan], workers: int) -> Iterator[tuple[dict[str, Any], list[str]]]:
    if workers <= 1:
        yield from map(make_study, plans)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(make_study, plans, chunksize=max(1, min(8, len(plans) // (4 * workers))))


def default_workers() -> int:
    return usable_cores()


def synthesize(
    req: SynthRequest,
    *,
    workers: int = 1,
    force: bool = False,
    on_study: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Write the data set described by `req`; calls `on_study(row)` after each study. Returns the rows."""
    prepare_output(req.out, force)
    plans = plan_studies(req)
    rows: list[dict[str, Any]] = []
    rles: list[tuple[str, list[str]]] = []
    for row, rle in _run(plans, workers):
        rows.append(row)
        rles.append((row["image_id"], rle))
        if on_study is not None:
            on_study(row)
    write_rle_rows(req.out / RLE_CSV, rles, stage=1)
    _write_metadata(req.out / METADATA_CSV, rows)
    manifest = {
        "generator": f"triage {__version__} synth",
        "studies": req.studies,
        "positive_fraction": req.positive_fraction,
        "size": req.size,
        "seed": req.seed,
        "phantom": req.config.to_dict(),
    }
    (req.out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return rows


def _write_metadata(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def read_metadata(root: Path) -> list[dict[str, str]]:
    """The rows of OUT/metadata.csv as strings."""
    with (root / METADATA_CSV).open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
