"""One synthetic study from its plan: sample, render, and write the DICOM file and its ground truth.

Runs in worker processes; everything it needs is in the `StudyPlan`, and everything it draws comes
from generators seeded by the plan, so a study is identical whichever worker makes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from pydicom.uid import generate_uid

from triage.data.siim import mask_to_rles
from triage.synth.anatomy import Habitus
from triage.synth.case import Case, sample_case
from triage.synth.config import PhantomConfig
from triage.synth.dicom_writer import (
    Acquisition,
    Identity,
    Modality,
    Photometric,
    build_dataset,
    write_dataset,
)
from triage.synth.lesions import stratum_of
from triage.synth.render import Rendered, render

DICOM_DIR = "dicom-images-train"
MASK_DIRS = {
    "mask": "masks",
    "lungs": "lungs",
    "heatmap": "heatmaps",
    "drain_mask": "drains",
    "corner_marker_mask": "corner_markers",
}
TRANSFER_SYNTAX_NAMES = {
    "none": "explicit-vr-little-endian",
    "rle": "rle-lossless",
    "j2k": "jpeg2000-lossless",
}


@dataclass(frozen=True)
class StudyPlan:
    """What a worker needs to make study number `index` of a data set."""

    seed: int
    index: int
    patient_index: int
    visit: int  # 0 for a patient's first study, 1 for the follow-up, ...
    label: bool
    size: int
    config: PhantomConfig
    out: Path


def _uid(plan: StudyPlan, what: str) -> str:
    return str(generate_uid(entropy_srcs=["triage-synth", str(plan.seed), str(plan.index), what]))


def _acquisition(case: Case, plan: StudyPlan, rng: np.random.Generator) -> Acquisition:
    cfg = plan.config
    modality: Modality = "DX" if rng.random() < cfg.dx_fraction else "CR"
    photometric: Photometric = "MONOCHROME1" if rng.random() < cfg.monochrome1_fraction else "MONOCHROME2"
    if modality == "CR":  # CR: varied rescale; MONOCHROME1 sometimes without PresentationLUTShape
        slope, intercept = [(1.0, 0.0), (0.5, 100.0), (2.0, -1024.0)][int(rng.integers(3))]
        plut = not (photometric == "MONOCHROME1" and rng.random() < 0.5)
    else:
        slope, intercept, plut = 1.0, 0.0, True
    return Acquisition(
        modality=modality,
        photometric=photometric,
        view=case.view,
        pixel_spacing_mm=round(430.0 / plan.size * float(rng.uniform(0.95, 1.05)), 4),
        rescale_slope=slope,
        rescale_intercept=intercept,
        presentation_lut_shape=plut,
        compression=cfg.compression,
        kvp=float(rng.choice([90.0, 100.0, 110.0, 120.0])),
        exposure_mas=round(float(rng.uniform(1.0, 4.0)), 1),
    )


def _identity(case: Case, plan: StudyPlan, habitus: Habitus, rng: np.random.Generator) -> Identity:
    patient_rng = np.random.default_rng([plan.seed, 3, plan.patient_index])
    age = int(patient_rng.integers(18, 90))
    day = np.datetime64("2025-01-01") + int(patient_rng.integers(0, 300)) + 3 * plan.visit
    hh, mm, ss = (int(v) for v in rng.integers([0, 0, 0], [24, 60, 60]))
    return Identity(
        patient_id=f"SYN-{plan.seed}-{plan.patient_index:06d}",
        patient_name=f"SYNTHETIC^PHANTOM^{plan.patient_index:06d}",
        patient_sex="F" if habitus.female else "M",
        patient_age_years=age,
        study_uid=_uid(plan, "study"),
        series_uid=_uid(plan, "series"),
        sop_uid=_uid(plan, "sop"),
        study_date=str(day).replace("-", ""),
        study_time=f"{hh:02d}{mm:02d}{ss:02d}",
        accession_number=f"SYN{plan.seed % 10_000:04d}{plan.index:08d}",
        study_description=f"XR CHEST {case.view}",
    )


def _save_png(path: Path, array: NDArray[Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(array).save(tmp, format="PNG", compress_level=1)
    tmp.replace(path)


def make_study(plan: StudyPlan) -> tuple[dict[str, Any], list[str]]:
    """Make and write one study; returns its metadata row and its RLE strings (``["-1"]`` if negative)."""
    habitus = Habitus.sample(np.random.default_rng([plan.seed, 1, plan.patient_index]))
    rng = np.random.default_rng([plan.seed, 2, plan.index])
    case = sample_case(plan.config, habitus, plan.label, rng)
    rendered = render(case, plan.size)
    acq = _acquisition(case, plan, rng)
    ident = _identity(case, plan, habitus, rng)
    sop = ident.sop_uid
    dicom_rel = Path(DICOM_DIR) / ident.study_uid / ident.series_uid / f"{sop}.dcm"
    write_dataset(build_dataset(rendered.image, acq, ident), plan.out / dicom_rel)
    paths = _write_ground_truth(plan.out, sop, rendered)
    area = int(rendered.pneumothorax.sum())
    fraction = area / rendered.pneumothorax.size
    ptx = case.pneumothorax
    row: dict[str, Any] = {
        "image_id": sop,
        "patient_id": ident.patient_id,
        "study_uid": ident.study_uid,
        "series_uid": ident.series_uid,
        "label": int(plan.label),
        "area_px": area,
        "area_fraction": round(fraction, 6),
        "size_stratum": stratum_of(fraction) if plan.label else "none",
        "side": ptx.side if ptx else "none",
        "location": ptx.location if ptx else "none",
        "drain": int(case.drain is not None),
        "ecg": int(bool(case.ecg)),
        "side_marker": case.marker.letter if case.marker else "none",
        "corner_marker": int(case.corner_marker is not None),
        "view": case.view,
        "modality": acq.modality,
        "photometric": acq.photometric,
        "presentation_lut_shape": int(acq.presentation_lut_shape),
        "transfer_syntax": TRANSFER_SYNTAX_NAMES[acq.compression],
        "rotation_deg": round(case.rotation_deg, 2),
        "size": plan.size,
        "dicom": dicom_rel.as_posix(),
        **paths,
    }
    return row, mask_to_rles(rendered.pneumothorax)


def _write_ground_truth(out: Path, sop: str, rendered: Rendered) -> dict[str, str]:
    """PNG masks (0/255) and the heatmap (0..255); returns their paths relative to `out`."""
    arrays: dict[str, NDArray[Any]] = {
        "mask": rendered.pneumothorax.astype(np.uint8) * 255,
        "lungs": rendered.lungs.astype(np.uint8) * 255,
        "heatmap": np.round(rendered.heatmap * 255).astype(np.uint8),
    }
    if rendered.drain.any():
        arrays["drain_mask"] = rendered.drain.astype(np.uint8) * 255
    if rendered.corner_marker is not None and rendered.corner_marker.any():
        arrays["corner_marker_mask"] = rendered.corner_marker.astype(np.uint8) * 255
    paths = {key: "" for key in MASK_DIRS}
    for key, array in arrays.items():
        rel = Path(MASK_DIRS[key]) / f"{sop}.png"
        _save_png(out / rel, array)
        paths[key] = rel.as_posix()
    return paths
