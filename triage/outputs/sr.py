"""TID 1500 Measurement Report (Comprehensive 3D SR) of one radiograph's pneumothorax result.

A 2D radiograph has no 3D geometry and we do not encode the mask as an SCOORD region, so the finding is
reported at the image level with one TID 1501 "Measurement and Qualitative Evaluation Group" (no region
geometry needed) that references the source image and carries:

* Finding: Pneumothorax (SCT 36118008); algorithm identification (bundle name + version);
* qualitative evaluation Pneumothorax = Present (SCT 52101004) / Absent (SCT 272519000) — the gate
  decision ``positive``;
* measurement Probability (DCM 122157) in UCUM "1" (no units), in [0, 1];
* measurement Area (SCT 42798000) in mm² when ``mask_area_mm2`` is given.

The observer is a device (the bundle; its UID is derived from the bundle hash). The report is
preliminary (not complete, not verified): it is a machine triage, not a read.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from triage.outputs.atomic import atomic_save_dataset
from triage.outputs.dicom_objects import (
    INSTANCE_NUMBER,
    MANUFACTURER,
    SERIES_NUMBER,
    BundleInfo,
    finish,
    output_uid,
)

logger = logging.getLogger(__name__)

PLAIN_CHEST_XRAY = hd.sr.CodedConcept("399208008", "SCT", "Plain chest X-ray")


def _observation_context(bundle: BundleInfo) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=["triage-device-v1", bundle.content_hash]),
        name=bundle.name,
        manufacturer_name=MANUFACTURER,
        model_name=bundle.name,
        serial_number=bundle.serial_number,
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )


def build_sr(
    source: pydicom.Dataset,
    *,
    probability: float,
    positive: bool,
    mask_area_mm2: float | None,
    bundle: BundleInfo,
) -> hd.sr.Comprehensive3DSR:
    """The SR dataset; see :func:`write_sr`."""
    if not (math.isfinite(probability) and 0.0 <= probability <= 1.0):
        raise ValueError(f"probability={probability!r} must be a finite number in [0, 1]")
    if mask_area_mm2 is not None and not (math.isfinite(mask_area_mm2) and mask_area_mm2 >= 0):
        raise ValueError(f"mask_area_mm2={mask_area_mm2!r} must be a finite number >= 0 or None")
    algorithm = hd.sr.AlgorithmIdentification(name=bundle.name, version=bundle.version)
    measurements = [
        hd.sr.Measurement(
            name=codes.DCM.Probability,
            value=float(probability),
            unit=codes.UCUM.NoUnits,
            algorithm_id=algorithm,
        )
    ]
    if mask_area_mm2 is not None:
        measurements.append(
            hd.sr.Measurement(
                name=codes.SCT.Area,
                value=float(mask_area_mm2),
                unit=codes.UCUM.SquareMillimeter,
                algorithm_id=algorithm,
            )
        )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=output_uid(source, bundle, "sr", "tracking"), identifier="pneumothorax"
        ),
        finding_type=codes.SCT.Pneumothorax,
        algorithm_id=algorithm,
        source_images=[
            hd.sr.SourceImageForMeasurementGroup(
                referenced_sop_class_uid=source.SOPClassUID,
                referenced_sop_instance_uid=source.SOPInstanceUID,
            )
        ],
        measurements=measurements,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(
                name=codes.SCT.Pneumothorax, value=codes.SCT.Present if positive else codes.SCT.Absent
            )
        ],
    )
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(bundle),
        procedure_reported=PLAIN_CHEST_XRAY,
        imaging_measurements=[group],
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[source],
        content=report[0],
        series_instance_uid=output_uid(source, bundle, "sr", "series"),
        series_number=SERIES_NUMBER["sr"],
        sop_instance_uid=output_uid(source, bundle, "sr", "sop"),
        instance_number=INSTANCE_NUMBER,
        manufacturer=MANUFACTURER,
        is_complete=False,
        is_final=False,
        is_verified=False,
    )
    finish(sr, source, bundle, "sr")
    return sr


def write_sr(
    source: pydicom.Dataset,
    *,
    probability: float,
    positive: bool,
    mask_area_mm2: float | None,
    path: Path,
    bundle: BundleInfo,
) -> str:
    """Write the TID 1500 report of ``probability`` (P(PTX), [0, 1]), ``positive`` (the gate decision)
    and ``mask_area_mm2`` (mm², or None) for ``source`` to ``path`` atomically.

    Returns its SOPInstanceUID (deterministic in source SOPInstanceUID + bundle hash). Raises ValueError
    for a probability outside [0, 1] or a negative area, TriageError(INVALID_UID / WRITE_FAILED).
    """
    sr = build_sr(
        source, probability=probability, positive=positive, mask_area_mm2=mask_area_mm2, bundle=bundle
    )
    atomic_save_dataset(path, sr)
    logger.info("wrote SR %s (positive=%s, P=%.3f)", path, positive, probability)
    return str(sr.SOPInstanceUID)
