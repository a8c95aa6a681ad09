"""Display rendering of a DICOM image's stored values: modality LUT → VOI → [0, 1] → inversion.

The pipeline (PS3.3 C.11) as :mod:`triage.io.dicom` documents it: VOI is the first usable of the VOI LUT
(normalised by the max of its data), the first WindowCenter/WindowWidth pair (width > 1), the min–max of
the modality values; MONOCHROME1 and PresentationLUTShape INVERSE are inverted once; PixelPaddingValue is
kept out of the display range and shown black. :func:`render` takes the lookup-table fast path where it
gives the identical image. :func:`check_not_degenerate` refuses images left with fewer than three grey
levels.
"""

from __future__ import annotations

import logging

import numpy as np
import pydicom
from pydicom.multival import MultiValue
from pydicom.pixels.processing import apply_modality_lut, apply_voi, apply_windowing

from triage.errors import ErrorCode, TriageError, safe_text
from triage.io.dicomfile import text_value

logger = logging.getLogger(__name__)


def _first_window(ds: pydicom.Dataset) -> bool:
    """True when the first WindowCenter/WindowWidth pair is usable (finite, width > 1)."""
    pair = [ds.get("WindowCenter"), ds.get("WindowWidth")]
    if None in pair:
        return False
    try:
        center, width = (float(v[0] if isinstance(v, MultiValue) else v) for v in pair)
    except (TypeError, ValueError, IndexError):  # empty or non-numeric DS
        center, width = np.nan, np.nan
    if np.isfinite([center, width]).all() and width > 1:
        return True
    logger.warning("WindowCenter/Width %s/%s unusable (width must be > 1); using min–max", center, width)
    return False


def _window_output_range(ds: pydicom.Dataset) -> tuple[float, float]:
    """(y at window bottom, y at window top) of pydicom's ``apply_windowing``: the modality range of the
    stored range (with a negative slope y_min > y_max, which still maps the window bottom to 0)."""
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    bits = int(ds.BitsStored)
    signed = int(ds.PixelRepresentation) == 1
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    if ds.get("RescaleSlope") is not None and ds.get("RescaleIntercept") is not None:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        return lo * slope + intercept, hi * slope + intercept
    return float(lo), float(hi)


def _voi(modality: np.ndarray, ds: pydicom.Dataset) -> tuple[np.ndarray, float, float]:
    """(VOI output, output shown black, output shown white); see the module docstring."""
    seq = ds.get("VOILUTSequence")
    if seq and None not in (seq[0].get("LUTDescriptor"), seq[0].get("LUTData")):
        try:
            entries, first = int(seq[0].LUTDescriptor[0]) or 2**16, int(seq[0].LUTDescriptor[1])
            top = float(np.max(apply_voi(np.arange(first, first + entries), ds, index=0)))
            if top > 0:
                values = apply_voi(np.rint(modality).astype(np.int64), ds, index=0)
                return np.asarray(values, dtype=np.float64), 0.0, top
            logger.warning("VOI LUT data are all zero; ignoring the VOI LUT")
        except (ValueError, NotImplementedError, IndexError, TypeError) as exc:
            logger.warning("VOI LUT unusable (%s: %s); ignoring it", type(exc).__name__, safe_text(exc))
    if _first_window(ds):
        lo, hi = _window_output_range(ds)
        return np.asarray(apply_windowing(modality, ds, index=0), dtype=np.float64), lo, hi
    return modality, float(modality.min()), float(modality.max())


def _inverts(ds: pydicom.Dataset) -> bool:
    """True for MONOCHROME1 (with or without PresentationLUTShape) and for PresentationLUTShape INVERSE."""
    shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
    return str(ds.PhotometricInterpretation).strip() == "MONOCHROME1" or shape == "INVERSE"


def padding_mask(stored: np.ndarray, ds: pydicom.Dataset) -> np.ndarray | None:
    """Where ``stored`` holds PixelPaddingValue (to PixelPaddingRangeLimit): no image there; None when the
    attribute is absent, unusable, or marks no pixel or every pixel."""
    try:
        value, limit = ds.get("PixelPaddingValue"), ds.get("PixelPaddingRangeLimit")
        if value is None or isinstance(value, bytes | MultiValue):
            return None
        lo, hi = sorted((int(value), int(value if limit is None else limit)))
    except (TypeError, ValueError):
        return None
    mask = (stored >= lo) & (stored <= hi)
    return mask if 0 < np.count_nonzero(mask) < mask.size else None


def render(stored: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """Stored values (rows, columns) → float32 (rows, columns) in [0, 1]; ValueError naming a bad value.
    Padding pixels (PixelPaddingValue) are left out of the display range and shown black."""
    if stored.ndim != 2:
        raise ValueError(f"pixel array shape {stored.shape} is not supported; valid: 2-D (rows, columns)")
    if not stored.dtype.isnative:  # Explicit VR Big Endian: the LUT path reinterprets the bytes
        stored = stored.astype(stored.dtype.newbyteorder("="))
    padding = padding_mask(stored, ds)
    if padding is not None:  # a value of the image in their place keeps them out of the min–max range
        stored = np.where(padding, stored[~padding].flat[0], stored)
    fast = _render_by_lut(stored, ds)
    out = fast if fast is not None else _render_pixels(stored, ds)
    if padding is not None:
        out[padding] = 0.0
    return out


def check_not_degenerate(pixels: np.ndarray, ds: pydicom.Dataset, stored: np.ndarray | None = None) -> None:
    """DEGENERATE_IMAGE when the display image (outside padding) is constant or has two levels only: a
    slope of 0, a VOI LUT to one value or a window outside the data leave nothing to read, and a model
    would still answer with confidence."""
    padding = padding_mask(stored, ds) if stored is not None else None
    values = pixels if padding is None else pixels[~padding]
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    levels = 1 if hi - lo < 1e-6 else 2 if not np.any((values > lo) & (values < hi)) else 3
    if levels < 3:
        message = (
            f"the display image is {'constant' if levels == 1 else 'two-level'} after the modality LUT / "
            "VOI (RescaleSlope, VOI LUT or window leave no grey levels): nothing to read"
        )
        raise TriageError(ErrorCode.DEGENERATE_IMAGE, message)


def _render_by_lut(stored: np.ndarray, ds: pydicom.Dataset) -> np.ndarray | None:
    """:func:`_render_pixels` computed once per stored value in [min, max] and looked up: the same result
    (every step is per pixel), ~5x faster on large radiographs. None where it would not be identical or
    not faster: non-integer data, a value range much wider than the image, a ModalityLUTSequence (the
    min–max fallback would then see values the image lacks), or values the pipeline rejects."""
    if stored.dtype.kind not in "ui" or ds.get("ModalityLUTSequence"):
        return None
    lo, hi = int(stored.min()), int(stored.max())
    if (hi - lo + 1) * 4 > stored.size:
        return None
    domain = np.arange(lo, hi + 1).astype(stored.dtype).reshape(1, -1)
    try:
        lut = _render_pixels(domain, ds)[0]
    except (ValueError, TypeError, IndexError, NotImplementedError):
        return None  # the per-pixel path raises the same error with the image's own values
    # stored − lo in the unsigned type of the stored width (wrap-around arithmetic: the difference lies in
    # [0, hi − lo] and fits), not int32: half the memory traffic, ~13 → ~8 ms at 2048²
    unsigned = np.dtype(f"u{stored.dtype.itemsize}")
    index = stored.view(unsigned) - unsigned.type(lo % (1 << (8 * unsigned.itemsize))) if lo else stored
    out: np.ndarray = np.take(lut, index)
    return out


def _render_pixels(stored: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """The display pipeline, pixel by pixel (see the module docstring)."""
    modality = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    values, lo, hi = _voi(modality, ds)
    if not (np.isfinite(values).all() and np.isfinite([lo, hi]).all()):
        slope, intercept = text_value(ds, "RescaleSlope"), text_value(ds, "RescaleIntercept")
        raise ValueError(f"non-finite values after modality LUT / VOI ({slope=}, {intercept=})")
    if hi == lo:
        logger.warning("constant image after modality LUT / VOI; returning all zeros")
        return np.zeros(values.shape, dtype=np.float32)
    out = np.clip((values - lo) / (hi - lo), 0.0, 1.0)
    return (1.0 - out if _inverts(ds) else out).astype(np.float32)
