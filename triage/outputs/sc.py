"""RGB Secondary Capture of the overlay (heat map, mask outline, burned-in caption), in the source study.

The overlay keeps the source image's orientation (it may be downsized), so PatientOrientation is copied
from the source; if the source has none it is derived from ViewPosition (PA: L\\F, AP: R\\F) and left
empty (Type 2) otherwise. BurnedInAnnotation is YES: the caption text is part of the pixels. No
PixelSpacing is written: the overlay is for viewing, not measuring.
"""

from __future__ import annotations

import logging
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom

from triage.outputs.atomic import atomic_save_dataset
from triage.outputs.dicom_objects import INSTANCE_NUMBER, SERIES_NUMBER, BundleInfo, Kind, finish, output_uid

logger = logging.getLogger(__name__)

_BIPED = {"A", "P", "R", "L", "H", "F"}
_FROM_VIEW = {"PA": ("L", "F"), "AP": ("R", "F")}


def patient_orientation(source: pydicom.Dataset) -> tuple[str, str] | None:
    """(row direction, column direction) for the overlay: the source's, else from ViewPosition, else None.

    Values are biped direction strings such as "L", "F" or "FL" (PS3.3 C.7.6.1.1.1).
    """
    value = source.get("PatientOrientation")
    values = [str(v) for v in value] if isinstance(value, pydicom.multival.MultiValue) else []
    if len(values) == 2 and all(v and set(v) <= _BIPED for v in values):
        return values[0], values[1]
    return _FROM_VIEW.get(str(source.get("ViewPosition", "")).upper())


def derived_sc(
    source: pydicom.Dataset,
    pixels: np.ndarray,
    *,
    kind: Kind,
    photometric: hd.PhotometricInterpretationValues,
    burned_in: bool,
    description: str,
    bundle: BundleInfo,
) -> hd.sc.SCImage:
    """An 8-bit Secondary Capture of ``pixels`` derived from ``source``, in its study, for an output of
    ``kind`` ("sc": the RGB overlay; "saliency": the greyscale saliency map): deterministic UIDs, the
    source's orientation (see the module), Type 2 attributes present, the source image referenced, and
    equipment and dates set (:func:`finish`)."""
    orientation = patient_orientation(source)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=np.ascontiguousarray(pixels),
        photometric_interpretation=photometric,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=output_uid(source, bundle, kind, "series"),
        series_number=SERIES_NUMBER[kind],
        sop_instance_uid=output_uid(source, bundle, kind, "sop"),
        instance_number=INSTANCE_NUMBER,
        manufacturer="triage",
        patient_orientation=("L", "F"),  # placeholder replaced below
        transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian,
    )
    if orientation is None:
        sc.add_new(0x00200020, "CS", None)  # PatientOrientation, Type 2: unknown
    else:  # set directly: highdicom's enum takes single letters only, not compound values such as "PF"
        sc.PatientOrientation = list(orientation)
    body_part = str(source.get("BodyPartExamined", "") or "")
    if body_part:
        sc.BodyPartExamined = body_part  # lets validators see an unpaired part: Laterality (2C) absent
    else:
        sc.add_new(0x00200060, "CS", None)  # Laterality, Type 2C, unknown: present and empty
    sc.BurnedInAnnotation = "YES" if burned_in else "NO"
    sc.Modality = "OT"
    sc.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    sc.DerivationDescription = description
    source_item = pydicom.Dataset()
    source_item.ReferencedSOPClassUID = source.SOPClassUID
    source_item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [source_item]
    finish(sc, source, bundle, kind)
    return sc


def build_sc(source: pydicom.Dataset, overlay_rgb: np.ndarray, *, bundle: BundleInfo) -> hd.sc.SCImage:
    """The SC dataset for ``overlay_rgb`` (uint8 H x W x 3); see :func:`write_sc`."""
    arr = np.asarray(overlay_rgb)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) < 1:
        raise ValueError(f"overlay must be uint8 HxWx3; got {arr.dtype} with shape {arr.shape}")
    return derived_sc(
        source,
        arr,
        kind="sc",
        photometric=hd.PhotometricInterpretationValues.RGB,
        burned_in=True,
        description="pneumothorax saliency heat map and mask outline with caption",
        bundle=bundle,
    )


def write_sc(source: pydicom.Dataset, overlay_rgb: np.ndarray, path: Path, *, bundle: BundleInfo) -> str:
    """Write an RGB Secondary Capture of ``overlay_rgb`` (uint8 HxWx3) to ``path`` atomically.

    Returns its SOPInstanceUID (deterministic in source SOPInstanceUID + bundle hash). Raises
    ValueError for a bad array, TriageError(INVALID_UID / WRITE_FAILED).
    """
    sc = build_sc(source, overlay_rgb, bundle=bundle)
    atomic_save_dataset(path, sc)
    logger.info("wrote SC %s (%dx%d)", path, sc.Columns, sc.Rows)
    return str(sc.SOPInstanceUID)
