"""Turn a rendered phantom image into a realistic CR / DX DICOM file.

``display`` is float HxW in [0, 1], 1 = most attenuating (bright on a MONOCHROME2 display, e.g. bone),
0 = air.  It is quantised to 12 bits stored in 16 so that modality LUT (RescaleSlope/Intercept) → linear
VOI window (PS3.3 C.11.2.1.2.1) → MONOCHROME1 inversion after VOI gives ``display`` back to within half a
stored step.  Output is deterministic: dates/times and UIDs all come from :class:`Identity`.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels.encoders.base import get_encoder
from pydicom.sequence import Sequence
from pydicom.uid import UID
from pydicom.valuerep import format_number_as_ds

from triage import __version__

logger = logging.getLogger(__name__)

Modality = Literal["CR", "DX"]
Photometric = Literal["MONOCHROME1", "MONOCHROME2"]
Compression = Literal["none", "rle", "j2k"]
View = Literal["AP", "PA"]
Sex = Literal["M", "F", "O"]

BITS_STORED = 12
MAX_STORED = (1 << BITS_STORED) - 1  # 4095
MANUFACTURER = "triage synthetic phantom"
DEIDENTIFICATION_METHOD = "synthetic phantom; no patient"
SOP_CLASS = {
    "CR": pydicom.uid.ComputedRadiographyImageStorage,
    "DX": pydicom.uid.DigitalXRayImageStorageForPresentation,
}
# compression -> (transfer syntax, package behind pydicom's "pylibjpeg" encoding plugin, used for both).
_ENCODERS = {
    "rle": (pydicom.uid.RLELossless, "pylibjpeg-rle"),
    "j2k": (pydicom.uid.JPEG2000Lossless, "pylibjpeg-openjpeg"),
}
_DATE = re.compile(r"^\d{4}(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])$")
_TIME = re.compile(r"^([01]\d|2[0-3])([0-5]\d([0-5]\d(\.\d{1,6})?)?)?$")


class EncoderUnavailableError(RuntimeError):
    """The package needed to encode the requested compression is not installed."""


def _check_choice(name: str, value: object, options: tuple[object, ...]) -> None:
    """Raise ValueError naming ``value`` and the valid ``options`` unless it is one of them."""
    if value not in options:
        raise ValueError(f"{name}={value!r} is not supported; valid options: {list(options)}")


def _ds(value: float) -> float:
    """``value`` as it will read back from a DS element (at most 16 characters)."""
    return float(format_number_as_ds(float(value)))


@dataclass(frozen=True)
class Acquisition:
    """How the image was acquired and encoded; ``pixel_spacing_mm`` is ImagerPixelSpacing (mm, row = col).

    The window is in modality units (after rescale).  Both ``None`` derives it from the data range: it
    spans the modality values of display 0 and 1, i.e. the full 12-bit stored range (a 1st..99th
    percentile window would clip the phantom's display, which is already normalised to [0, 1]).
    """

    modality: Modality
    photometric: Photometric
    view: View
    pixel_spacing_mm: float
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    window_center: float | None = None
    window_width: float | None = None
    presentation_lut_shape: bool = True
    compression: Compression = "none"
    kvp: float = 110.0
    exposure_mas: float = 2.0

    def __post_init__(self) -> None:
        _check_choice("modality", self.modality, get_args(Modality))
        _check_choice("photometric", self.photometric, get_args(Photometric))
        _check_choice("view", self.view, get_args(View))
        _check_choice("compression", self.compression, get_args(Compression))
        for name in ("pixel_spacing_mm", "rescale_slope", "kvp"):
            value = float(getattr(self, name))
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"{name}={value!r} must be a finite number > 0")
        if not np.isfinite(self.rescale_intercept):
            raise ValueError(f"rescale_intercept={self.rescale_intercept!r} must be finite")
        if not (np.isfinite(self.exposure_mas) and self.exposure_mas >= 0):
            raise ValueError(f"exposure_mas={self.exposure_mas!r} must be a finite number >= 0")
        window = (self.window_center, self.window_width)
        if (window[0] is None) != (window[1] is None) or not (window[1] is None or window[1] > 1):
            raise ValueError(f"window (center, width)={window}: give both (width > 1) or neither")


@dataclass(frozen=True)
class Identity:
    """Synthetic patient / study identity; dates are YYYYMMDD, times HHMMSS[.ffffff]."""

    patient_id: str
    patient_name: str
    patient_sex: Sex
    patient_age_years: int
    study_uid: str
    series_uid: str
    sop_uid: str
    study_date: str
    study_time: str
    accession_number: str
    study_description: str = "XR CHEST"
    series_number: int = 1
    instance_number: int = 1

    def __post_init__(self) -> None:
        _check_choice("patient_sex", self.patient_sex, get_args(Sex))
        if not 0 <= self.patient_age_years <= 999:
            raise ValueError(f"patient_age_years={self.patient_age_years!r} must be in 0..999")
        for name in ("study_uid", "series_uid", "sop_uid"):
            if not UID(getattr(self, name)).is_valid:
                raise ValueError(f"{name}={getattr(self, name)!r} is not a valid DICOM UID")
        if not _DATE.match(self.study_date):
            raise ValueError(f"study_date={self.study_date!r} must be YYYYMMDD")
        if not _TIME.match(self.study_time):
            raise ValueError(f"study_time={self.study_time!r} must be HHMMSS[.ffffff]")


def _window(acq: Acquisition) -> tuple[float, float]:
    """(center, width) of the linear VOI window in modality units, as written to the file."""
    if acq.window_center is not None and acq.window_width is not None:
        return _ds(acq.window_center), _ds(acq.window_width)
    slope, intercept = _ds(acq.rescale_slope), _ds(acq.rescale_intercept)
    lo, hi = intercept, intercept + slope * MAX_STORED
    return _ds((lo + hi) / 2 + 0.5), _ds(hi - lo + 1)


def quantise(display: np.ndarray, acq: Acquisition) -> np.ndarray:
    """Stored values (uint16 HxW, 0..4095) whose display pipeline output is ``display`` (float HxW, [0,1]).

    Raises ValueError if the window needs stored values outside 0..4095 under the rescale.
    """
    slope, intercept = _ds(acq.rescale_slope), _ds(acq.rescale_intercept)
    center, width = _window(acq)
    low = center - 0.5 - (width - 1) / 2  # modality value mapped to VOI output 0

    def stored(voi_fraction: np.ndarray) -> np.ndarray:
        return np.asarray((low + voi_fraction * (width - 1) - intercept) / slope, dtype=np.float64)

    ends = stored(np.array([0.0, 1.0]))
    if ends.min() < -0.5 or ends.max() > MAX_STORED + 0.5:
        raise ValueError(
            f"window center={center} width={width} needs stored values {ends.min():.1f}..{ends.max():.1f} "
            f"with slope={slope} intercept={intercept}; valid stored range is 0..{MAX_STORED}"
        )
    voi = 1.0 - display if acq.photometric == "MONOCHROME1" else display  # MONOCHROME1: high stored = dark
    out: np.ndarray = np.clip(np.rint(stored(voi)), 0, MAX_STORED).astype("<u2")
    return out


def _check_display(display: np.ndarray) -> np.ndarray:
    """``display`` as float64 HxW after checking shape, dtype and the [0, 1] range."""
    arr = np.asarray(display)
    if arr.ndim != 2 or min(arr.shape) < 1 or max(arr.shape) > 65535:
        raise ValueError(f"display must be 2-D HxW with sides 1..65535; got shape {arr.shape}")
    lo, hi = float(arr.min()), float(arr.max())
    if not (lo >= 0.0 and hi <= 1.0):  # also catches NaN
        raise ValueError(f"display values span {lo}..{hi}; valid range is [0, 1]")
    return arr.astype(np.float64)


def _require_encoder(compression: str) -> UID:
    uid, package = _ENCODERS[compression]
    encoder = get_encoder(uid)
    if "pylibjpeg" not in encoder.available_plugins:
        raise EncoderUnavailableError(
            f"compression={compression!r} ({uid.name}) needs the packages pylibjpeg and {package}; "
            f"install them or use compression='none' (pydicom: {encoder.missing_dependencies})"
        )
    return uid


def _set_dx_attributes(ds: Dataset, acq: Acquisition) -> None:
    """Type 1/2 attributes of the DX Series, DX Anatomy Imaged, DX Image and DX Detector modules."""
    region = Dataset()
    region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = "43799004", "SCT", "Chest"
    ds.AnatomicRegionSequence = Sequence([region])
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageLaterality = "U"
    ds.RescaleType = "US"
    ds.PixelIntensityRelationship = "LOG"
    # +1: lower stored value = less X-ray intensity at the detector (= more attenuation, brighter).
    ds.PixelIntensityRelationshipSign = 1 if acq.photometric == "MONOCHROME1" else -1
    ds.DetectorType = "SCINTILLATOR"


def build_dataset(display: np.ndarray, acq: Acquisition, ident: Identity) -> pydicom.Dataset:
    """Build a CR / DX dataset (with file meta) from ``display`` (float HxW in [0, 1], 1 = bone-bright).

    Raises ValueError for a bad ``display`` or window, EncoderUnavailableError for a missing encoder.
    """
    pixels = quantise(_check_display(display), acq)
    center, width = _window(acq)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SOP_CLASS[acq.modality]
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = UID(ident.sop_uid)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian

    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    for prefix in ("InstanceCreation", "Study", "Series", "Acquisition", "Content"):
        setattr(ds, f"{prefix}Date", ident.study_date)
        setattr(ds, f"{prefix}Time", ident.study_time)
    ds.AccessionNumber = ident.accession_number
    ds.Modality = acq.modality
    ds.Manufacturer = MANUFACTURER
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = ident.study_description
    ds.PatientName = ident.patient_name
    ds.PatientID = ident.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ident.patient_sex
    ds.PatientAge = f"{ident.patient_age_years:03d}Y"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = DEIDENTIFICATION_METHOD
    ds.BodyPartExamined = "CHEST"
    ds.KVP = format_number_as_ds(float(acq.kvp))
    ds.SoftwareVersions = f"triage {__version__}"
    ds.Exposure = round(acq.exposure_mas)
    ds.ExposureInuAs = round(acq.exposure_mas * 1000)
    ds.ImagerPixelSpacing = [format_number_as_ds(float(acq.pixel_spacing_mm))] * 2
    ds.ViewPosition = acq.view
    ds.StudyInstanceUID = ident.study_uid
    ds.SeriesInstanceUID = ident.series_uid
    ds.StudyID = ident.accession_number[:16]
    ds.SeriesNumber = ident.series_number
    ds.InstanceNumber = ident.instance_number
    ds.PatientOrientation = ["L", "F"]
    if acq.modality == "DX":
        _set_dx_attributes(ds, acq)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = acq.photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, BITS_STORED, BITS_STORED - 1, 0
    ds.BurnedInAnnotation = "NO"
    ds.WindowCenter = format_number_as_ds(center)
    ds.WindowWidth = format_number_as_ds(width)
    ds.WindowCenterWidthExplanation = "FULL RANGE" if acq.window_center is None else "PHANTOM"
    ds.VOILUTFunction = "LINEAR"
    ds.RescaleIntercept = format_number_as_ds(_ds(acq.rescale_intercept))
    ds.RescaleSlope = format_number_as_ds(_ds(acq.rescale_slope))
    ds.LossyImageCompression = "00"
    if acq.presentation_lut_shape:
        ds.PresentationLUTShape = "INVERSE" if acq.photometric == "MONOCHROME1" else "IDENTITY"
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OW"
    if acq.compression != "none":
        uid = _require_encoder(acq.compression)
        ds.compress(uid, pixels, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    return ds


def write_dataset(ds: pydicom.Dataset, path: Path) -> None:
    """Write ``ds`` as a Part 10 file (preamble + file meta, ``ds.file_meta.TransferSyntaxUID``) at ``path``.

    Parents are created; the file is written to a temporary name beside ``path`` and ``os.replace``d.
    """
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        raise ValueError(f"dataset for {path} has no file_meta.TransferSyntaxUID; use build_dataset")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            pydicom.dcmwrite(fh, ds, enforce_file_format=True)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.chmod(0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.info("wrote %s (%s)", path, UID(meta.TransferSyntaxUID).name)
