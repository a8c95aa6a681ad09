"""DICOM Segmentation (BINARY, one segment "Pneumothorax") of a mask on the source image's pixel grid.

Radiographs (CR, DX) have no Frame of Reference: highdicom then builds a SEG without one, referencing
the source image through the Derivation Image Sequence of its single frame, and we copy the source's
PatientOrientation (Type 2C when there is no Frame of Reference; ``dciodvfy`` flags its absence).

An empty mask still gives a valid SEG with one all-zero frame (``omit_empty_frames=False``); the
caller decides whether to write one for negatives (``triage predict`` writes SEGs for positives only,
which is what a PACS user expects).
"""

from __future__ import annotations

import logging
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from triage.outputs.atomic import atomic_save_dataset
from triage.outputs.dicom_objects import INSTANCE_NUMBER, SERIES_NUMBER, BundleInfo, finish, output_uid

logger = logging.getLogger(__name__)

SEGMENT_LABEL = "Pneumothorax"


def segment_description(bundle: BundleInfo) -> hd.seg.SegmentDescription:
    """Segment 1: category Morphologically Abnormal Structure (SCT 49755003, CID 7150), type
    Pneumothorax (SCT 36118008), automatic, by the bundle's algorithm."""
    return hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.cid7150.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Pneumothorax,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=bundle.algorithm_identification(),
    )


def build_seg(source: pydicom.Dataset, mask: np.ndarray, *, bundle: BundleInfo) -> hd.seg.Segmentation:
    """The SEG dataset for ``mask`` (bool Rows x Columns of ``source``); see :func:`write_seg`."""
    arr = np.asarray(mask)
    shape = (int(source.Rows), int(source.Columns))
    if arr.dtype != np.bool_ or arr.shape != shape:
        raise ValueError(f"mask must be bool with the source's shape {shape}; got {arr.dtype} {arr.shape}")
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=arr[None].astype(np.uint8),  # one frame: also right for sources with plane positions
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment_description(bundle)],
        series_instance_uid=output_uid(source, bundle, "seg", "series"),
        series_number=SERIES_NUMBER["seg"],
        sop_instance_uid=output_uid(source, bundle, "seg", "sop"),
        instance_number=INSTANCE_NUMBER,
        manufacturer="triage",
        manufacturer_model_name=bundle.name,
        software_versions=bundle.software_versions[0],  # both values: finish()
        device_serial_number=bundle.serial_number,
        content_description="Pneumothorax segmentation",
        content_label="PTX",
        omit_empty_frames=False,
    )
    if "FrameOfReferenceUID" not in seg and "PatientOrientation" not in seg:
        seg.PatientOrientation = source.get("PatientOrientation", "") or ""
    seg.DimensionOrganizationSequence[0].DimensionOrganizationUID = output_uid(source, bundle, "seg", "dim")
    for item in seg.DimensionIndexSequence:
        item.DimensionOrganizationUID = seg.DimensionOrganizationSequence[0].DimensionOrganizationUID
    finish(seg, source, bundle, "seg")
    return seg


def write_seg(source: pydicom.Dataset, mask: np.ndarray, path: Path, *, bundle: BundleInfo) -> str:
    """Write a BINARY DICOM SEG of ``mask`` (bool HxW = source Rows x Columns) to ``path`` atomically.

    Returns its SOPInstanceUID (deterministic in source SOPInstanceUID + bundle hash). Raises
    ValueError for a mask of the wrong dtype/shape, TriageError(INVALID_UID / WRITE_FAILED).
    """
    seg = build_seg(source, mask, bundle=bundle)
    atomic_save_dataset(path, seg)
    logger.info("wrote SEG %s (%d mask pixels)", path, int(np.count_nonzero(mask)))
    return str(seg.SOPInstanceUID)
