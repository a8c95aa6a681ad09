"""The one DICOM pixel reader of the product: stored values → display-ready float image.

Pipeline (PS3.3 C.11): stored values → modality LUT (ModalityLUTSequence or RescaleSlope/Intercept) →
VOI (VOILUTSequence preferred, else the first WindowCenter/Width; neither: min–max of the modality values)
→ normalise to [0, 1] by the VOI output range → inversion.

Inversion rule: the image is inverted when PhotometricInterpretation is MONOCHROME1, whether or not
(2050,0020) PresentationLUTShape is present (CR MONOCHROME1 files without it are common and must not be
read as MONOCHROME2), and also when a MONOCHROME2 image says PresentationLUTShape INVERSE.  MONOCHROME1 with
INVERSE (what the DX IOD requires) is inverted once, not twice.

Only single-frame grayscale (SamplesPerPixel 1, MONOCHROME1/2) is supported for now.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut

logger = logging.getLogger(__name__)

GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")


@dataclass(frozen=True)
class DicomImage:
    """A decoded single-frame grayscale image.

    ``pixels`` is float32 HxW in [0, 1], 1 = bright on a standard display (bone), after modality LUT →
    VOI → MONOCHROME1 inversion.  ``pixel_spacing_mm`` is (row, column) spacing in mm from
    ImagerPixelSpacing, else PixelSpacing, else None.
    """

    pixels: np.ndarray
    study_uid: str
    series_uid: str
    sop_uid: str
    modality: str
    photometric: str
    view: str | None
    pixel_spacing_mm: tuple[float, float] | None
    transfer_syntax: str


def _check_supported(ds: pydicom.Dataset) -> None:
    """Raise ValueError naming the value unless ``ds`` holds one grayscale frame of integer pixel data."""
    if "PixelData" not in ds:
        raise ValueError("dataset has no (7FE0,0010) Pixel Data; only integer Pixel Data is supported")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in GRAYSCALE:
        raise ValueError(f"PhotometricInterpretation={photometric!r} is not supported; valid: {GRAYSCALE}")
    samples = int(ds.get("SamplesPerPixel", 1))
    if samples != 1:
        raise ValueError(f"SamplesPerPixel={samples} is not supported; valid: 1 (grayscale)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise ValueError(f"NumberOfFrames={frames} is not supported; valid: 1 (single frame)")


def _has_window(ds: pydicom.Dataset) -> bool:
    return ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None


def _has_voi_lut(ds: pydicom.Dataset) -> bool:
    seq = ds.get("VOILUTSequence")
    return bool(seq) and None not in (seq[0].get("LUTDescriptor"), seq[0].get("LUTData"))


def _window_output_range(ds: pydicom.Dataset) -> tuple[float, float]:
    """(y at window bottom, y at window top) of ``apply_windowing``: the modality range of the stored range.

    Mirrors pydicom's ``apply_windowing``; with a negative slope y_min > y_max, which still normalises
    the window bottom to 0 and its top to 1.
    """
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    bits = int(ds.BitsStored)
    lo, hi = (
        (0, 2**bits - 1) if int(ds.PixelRepresentation) == 0 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    )
    if ds.get("RescaleSlope") is not None and ds.get("RescaleIntercept") is not None:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        return lo * slope + intercept, hi * slope + intercept
    return float(lo), float(hi)


def _inverts(ds: pydicom.Dataset) -> bool:
    """True for MONOCHROME1 (with or without PresentationLUTShape) and for PresentationLUTShape INVERSE."""
    shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
    return str(ds.PhotometricInterpretation) == "MONOCHROME1" or shape == "INVERSE"


def to_display(ds: pydicom.Dataset) -> np.ndarray:
    """Run the display pipeline on ``ds``: float32 HxW in [0, 1], 1 = bright on a standard display.

    Raises ValueError (naming the value) for anything but single-frame grayscale.
    """
    _check_supported(ds)
    stored = ds.pixel_array
    if stored.ndim != 2:
        raise ValueError(f"pixel array shape {stored.shape} is not supported; valid: 2-D (rows, columns)")
    modality = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    if _has_voi_lut(ds):
        values = np.asarray(apply_voi_lut(modality, ds, index=0, prefer_lut=True), dtype=np.float64)
        lo, hi = 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    elif _has_window(ds):
        values = np.asarray(apply_voi_lut(modality, ds, index=0, prefer_lut=True), dtype=np.float64)
        lo, hi = _window_output_range(ds)
    else:
        values = modality
        lo, hi = float(modality.min()), float(modality.max())
        logger.debug("no VOI LUT or window; normalising by modality range %s..%s", lo, hi)
    if hi == lo:
        out = np.zeros(values.shape, dtype=np.float64)
    else:
        out = np.clip((values - lo) / (hi - lo), 0.0, 1.0)
    if _inverts(ds):
        out = 1.0 - out
    return out.astype(np.float32)


def _spacing(ds: pydicom.Dataset) -> tuple[float, float] | None:
    for keyword in ("ImagerPixelSpacing", "PixelSpacing"):
        value = ds.get(keyword)
        if value is not None and len(value) == 2:
            return float(value[0]), float(value[1])
    return None


def read_dicom(path: Path) -> DicomImage:
    """Read one DICOM file into a :class:`DicomImage` (see :func:`to_display` for the pixel pipeline)."""
    ds = pydicom.dcmread(Path(path))
    pixels = to_display(ds)
    meta = getattr(ds, "file_meta", None)
    view = ds.get("ViewPosition")
    return DicomImage(
        pixels=pixels,
        study_uid=str(ds.get("StudyInstanceUID", "")),
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        sop_uid=str(ds.get("SOPInstanceUID", "")),
        modality=str(ds.get("Modality", "")),
        photometric=str(ds.PhotometricInterpretation),
        view=str(view) if view else None,
        pixel_spacing_mm=_spacing(ds),
        transfer_syntax=str(meta.get("TransferSyntaxUID", "")) if meta is not None else "",
    )
