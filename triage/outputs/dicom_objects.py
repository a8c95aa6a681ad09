"""Shared pieces of the DICOM outputs (SEG, SC, SR): bundle identity, deterministic UIDs, equipment.

Every output instance gets UIDs derived from the source StudyInstanceUID + SOPInstanceUID + the bundle's
content hash + the output kind (``pydicom.uid.generate_uid(entropy_srcs=...)``), so re-running a batch
replaces each object in the PACS instead of adding a duplicate. Each output is its own series (one per
source image and kind) with a fixed SeriesNumber and InstanceNumber 1. Patient and study modules come from the
source image (highdicom copies them), so a PACS files the outputs into the source's study.

Dates and times written by highdicom as "now" are replaced by the source's ContentDate/Time (else
AcquisitionDate/Time, else StudyDate/Time), so that the bytes are reproducible; where the source has
none of these, highdicom's current time stays.

The writers live in :mod:`triage.outputs.seg`, :mod:`triage.outputs.sc`, :mod:`triage.outputs.sr` and
:mod:`triage.outputs.saliency` (the saliency model's map).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import highdicom as hd
import pydicom
from pydicom import valuerep
from pydicom.charset import python_encoding
from pydicom.config import RAISE
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
    """A UID that is a function of (source StudyInstanceUID, SOPInstanceUID, bundle content hash, kind,
    role) only: the same SOPInstanceUID sent in two studies (a modality reusing UIDs) gives two outputs
    with different UIDs.

    ``role`` separates the UIDs one object needs: "sop", "series", "dimension", "tracking", ...
    """
    sop = source_sop_uid(source)
    study = str(source.get("StudyInstanceUID", "") or "")
    return generate_uid(entropy_srcs=["triage-output-v2", study, sop, bundle.content_hash, kind, role])


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


# --- source attributes the outputs copy ----------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1a\x1c-\x1f\x7f]")  # ESC (0x1b) starts ISO 2022 escapes
_SEXES = frozenset({"M", "F", "O"})


def _pn_ok(value: str) -> bool:
    groups = value.split("=")
    return len(groups) <= 3 and all(g.count("^") <= 4 and len(g) <= 64 for g in groups)


def _date_time_ok(vr: str) -> Callable[[str], bool]:
    kind = {"DA": valuerep.DA, "TM": valuerep.TM, "DT": valuerep.DT}[vr]

    def check(value: str) -> bool:
        try:
            return not value or kind(value) is not None
        except (ValueError, TypeError, OverflowError):
            return False

    return check


_EXTRA: dict[str, Callable[[str], bool]] = {
    "PN": _pn_ok,
    "DA": _date_time_ok("DA"),
    "TM": _date_time_ok("TM"),
    "DT": _date_time_ok("DT"),
}
_TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UT"}
)


def _valid(keyword: str, vr: str, value: Any) -> bool:
    values = list(value) if isinstance(value, pydicom.multival.MultiValue) else [value]
    for item in values:
        text = "" if item is None else str(item)
        if _CONTROL.search(text.replace("\r\n", "") if vr in ("LT", "ST", "UT") else text):
            return False
        try:
            valuerep.validate_value(vr, text, RAISE)
        except (ValueError, TypeError):
            return False
        if vr in _EXTRA and not _EXTRA[vr](text):
            return False
    return not (keyword == "PatientSex" and str(value or "") not in _SEXES | {""})


def sanitised_source(source: pydicom.Dataset) -> tuple[pydicom.Dataset, list[str]]:
    """A copy of ``source`` whose top-level text attributes are valid for their VR, and the keywords (or
    tags) that were emptied: an invalid PatientBirthDate, PatientSex, PatientName (too many components,
    too long, control characters), ... would make highdicom refuse the output or dciodvfy reject it, and
    a positive must never lose its SEG / SC / SR for it.  An unknown SpecificCharacterSet becomes
    ISO_IR 192 (UTF-8; the values are already decoded text).  The keywords name the attribute only."""
    ds = copy.deepcopy(source)  # the header only (the reader drops Pixel Data): cheap
    emptied: list[str] = []
    charset = ds.get("SpecificCharacterSet")
    names = list(charset) if isinstance(charset, pydicom.multival.MultiValue) else [charset or ""]
    known = True
    for name in names:
        try:
            python_encoding[str(name).strip() or "ISO_IR 6"]
        except KeyError:
            known = False
    if not known or not _valid("SpecificCharacterSet", "CS", charset):
        ds[0x00080005] = pydicom.DataElement(0x00080005, "CS", "ISO_IR 192")
        emptied.append("SpecificCharacterSet")
    for elem in list(ds):
        if elem.VR not in _TEXT_VRS or elem.tag.is_private or elem.keyword == "SpecificCharacterSet":
            continue
        try:
            value = elem.value
        except Exception:
            value = None
            ok = False
        else:
            ok = _valid(elem.keyword, elem.VR, value)
        if not ok:
            ds[elem.tag] = pydicom.DataElement(elem.tag, elem.VR, None)
            emptied.append(elem.keyword or str(elem.tag))
    return ds, emptied
