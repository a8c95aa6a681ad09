"""Shared pieces of the DICOM outputs (SEG, SC, SR): bundle identity, deterministic UIDs, equipment.

Every output instance gets UIDs derived from the source SOPInstanceUID + the bundle's content hash +
the output kind (``pydicom.uid.generate_uid(entropy_srcs=...)``), so re-running a batch replaces each
object in the PACS instead of adding a duplicate. Each output is its own series (one per source image
and kind) with a fixed SeriesNumber and InstanceNumber 1. Patient and study modules come from the
source image (highdicom copies them), so a PACS files the outputs into the source's study.

Dates and times written by highdicom as "now" are replaced by the source's ContentDate/Time (else
AcquisitionDate/Time, else StudyDate/Time), so that the bytes are reproducible; where the source has
none of these, highdicom's current time stays.

The writers live in :mod:`triage.outputs.seg`, :mod:`triage.outputs.sc`, :mod:`triage.outputs.sr` and
:mod:`triage.outputs.saliency` (the saliency model's map).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import UID, generate_uid

from triage import __version__
from triage.outputs.paths import validated_uid

Kind = Literal["seg", "sc", "sr", "saliency"]

MANUFACTURER = "triage"
SERIES_NUMBER: dict[Kind, int] = {"seg": 9101, "sc": 9102, "sr": 9103, "saliency": 9104}
SERIES_DESCRIPTION: dict[Kind, str] = {
    "seg": "triage PTX SEG",
    "sc": "triage PTX overlay",
    "sr": "triage PTX SR",
    "saliency": "triage PTX saliency map",
}
INSTANCE_NUMBER = 1
_LO_MAX = 64  # Long String value length


@dataclass(frozen=True)
class BundleInfo:
    """Which model bundle produced an output: ``name`` (ManufacturerModelName), ``version``, and
    ``content_hash`` (hex digest of the bundle's files; seeds the output UIDs, first 16 characters
    are the DeviceSerialNumber)."""

    name: str
    version: str
    content_hash: str

    def __post_init__(self) -> None:
        for field_name in ("name", "version", "content_hash"):
            value = getattr(self, field_name)
            if not isinstance(value, str) or not value.strip() or len(value) > _LO_MAX or "\\" in value:
                raise ValueError(
                    f"BundleInfo.{field_name}={value!r} must be a non-empty string of at most "
                    f"{_LO_MAX} characters without backslashes"
                )

    @property
    def software_versions(self) -> tuple[str, str]:
        """SoftwareVersions values: the triage package version and the bundle version."""
        return (f"triage {__version__}"[:_LO_MAX], f"{self.name} {self.version}"[:_LO_MAX])

    @property
    def serial_number(self) -> str:
        """DeviceSerialNumber: the first 16 characters of the bundle's content hash."""
        return self.content_hash[:16]

    def algorithm_identification(self) -> hd.AlgorithmIdentificationSequence:
        """Segmentation algorithm identification: family Artificial Intelligence (CID 7162)."""
        return hd.AlgorithmIdentificationSequence(
            name=self.name, version=self.version, family=codes.cid7162.ArtificialIntelligence
        )


def source_sop_uid(source: pydicom.Dataset) -> str:
    """The source's SOPInstanceUID after validation (raises TriageError(INVALID_UID))."""
    return validated_uid(str(source.get("SOPInstanceUID", "")), "SOPInstanceUID")


def output_uid(source: pydicom.Dataset, bundle: BundleInfo, kind: Kind, role: str) -> UID:
    """A UID that is a function of (source SOPInstanceUID, bundle content hash, kind, role) only.

    ``role`` separates the UIDs one object needs: "sop", "series", "dimension", "tracking", ...
    """
    sop = source_sop_uid(source)
    return generate_uid(entropy_srcs=["triage-output-v1", sop, bundle.content_hash, kind, role])


def source_datetime(source: pydicom.Dataset) -> tuple[str, str] | None:
    """(DA, TM) of the source's content (else acquisition, else study); None if it has none."""
    for prefix in ("Content", "Acquisition", "Study"):
        date = str(source.get(f"{prefix}Date", "") or "")
        time = str(source.get(f"{prefix}Time", "") or "")
        if len(date) == 8 and date.isdigit():
            return date, time or "000000"
    return None


def finish(ds: pydicom.Dataset, source: pydicom.Dataset, bundle: BundleInfo, kind: Kind) -> None:
    """Set equipment, series description and reproducible dates on a highdicom-built ``ds``."""
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = bundle.name
    ds.SoftwareVersions = list(bundle.software_versions)
    ds.DeviceSerialNumber = bundle.serial_number
    ds.SeriesDescription = SERIES_DESCRIPTION[kind]
    when = source_datetime(source)
    if when is not None:
        for date_kw, time_kw in (
            ("ContentDate", "ContentTime"),
            ("SeriesDate", "SeriesTime"),
            ("InstanceCreationDate", "InstanceCreationTime"),
            ("DateOfSecondaryCapture", "TimeOfSecondaryCapture"),
        ):
            if date_kw in ds or time_kw in ds:
                setattr(ds, date_kw, when[0])
                setattr(ds, time_kw, when[1])
        for item in ds.get("ContributingEquipmentSequence", []):
            if "ContributionDateTime" in item:
                item.ContributionDateTime = when[0] + when[1]
