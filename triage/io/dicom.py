"""The one DICOM reader of the product: file → validated header + display-ready float image.

:func:`read_image` raises only TriageError; checks run cheapest first: NOT_FOUND / UNREADABLE / NOT_DICOM /
TRUNCATED (file layer: :func:`triage.io.dicomfile.open_dataset`) → UNSUPPORTED_MODALITY → NO_PIXEL_DATA →
UNSUPPORTED_PHOTOMETRIC → MULTI_FRAME → TOO_SMALL → INVALID_UID → MISSING_CODEC → TRUNCATED (Pixel Data
shorter than Rows×Columns×BitsAllocated) → DECODE_FAILED (also: anything raised inside pydicom); other
surprises are INTERNAL.  Messages name the bad value, never the path (folders can carry patient names).

Pixels (rendered by :mod:`triage.io.display`): stored → modality LUT → VOI → [0, 1] by the VOI output
range → inversion (PS3.3 C.11).  VOI is
the first usable of: VOILUTSequence item 0, normalised by the max of its LUT data, not 2**bits of
LUTDescriptor (12-bit LUTs declared 16-bit are common); the first WindowCenter/Width pair (width ≤ 1 is
ignored); min–max of the modality values.  A constant result gives all zeros (a warning).  MONOCHROME1
is inverted after VOI with or without PresentationLUTShape, MONOCHROME2 + INVERSE too, never twice.

Plugins (:data:`_PLUGIN_ORDER`): GDCM only where nothing else decodes (JPEG lossless) or is installed,
never after another decoder rejected the data, because GDCM aborts the process on some corrupt streams;
12-bit JPEG Extended needs the GPL pylibjpeg-libjpeg, deliberately not shipped: MISSING_CODEC.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom import uid as uids
from pydicom.encaps import generate_frames
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import _get_jpg_parameters, pixel_array  # the former: pydicom's own JPEG parser
from pydicom.uid import UID

from triage.errors import ErrorCode, TriageError, safe_text
from triage.io.codestream import DEFAULT_MAX_PIXELS, SizeLimit, check_decoded_size
from triage.io.dicomfile import FATAL, open_dataset, patient_identifiers, text_value, unforeseen_error
from triage.io.dicomfile import read_header as read_header  # re-exported: the reader's header-only form
from triage.io.display import check_not_degenerate, render
from triage.io.reduced import decode_reduced

logger = logging.getLogger(__name__)

GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
MIN_MM, MAX_MM = 0.01, 5.0  # radiograph detectors: ~0.05–0.2 mm; else the value is bogus
_DX_PRESENTATION = uids.DigitalXRayImageStorageForPresentation
_DX_PROCESSING = uids.DigitalXRayImageStorageForProcessing
ACCEPTED = f"Modality CR, or Modality DX with SOP class {_DX_PRESENTATION.name} ({_DX_PRESENTATION})"
_HINT = "pass --any-modality (ReadPolicy(any_modality=True)) to read it anyway"
_JPEG = (uids.JPEGBaseline8Bit, uids.JPEGExtended12Bit, uids.JPEGLossless, uids.JPEGLosslessSV1)
_JPEG_LS = (uids.JPEGLSLossless, uids.JPEGLSNearLossless)
_J2K = (uids.JPEG2000Lossless, uids.JPEG2000, uids.HTJ2KLossless, uids.HTJ2KLosslessRPCL, uids.HTJ2K)
# GDCM aborts the process (C++ exceptions through C) on some corrupt streams: decoders that raise go first.
_PLUGIN_ORDER: dict[str, tuple[str, ...]] = {
    **{ts: ("pillow", "gdcm") for ts in (uids.JPEGBaseline8Bit, uids.JPEGExtended12Bit)},
    **{ts: ("gdcm",) for ts in (uids.JPEGLossless, uids.JPEGLosslessSV1)},  # the only non-GPL decoder
    **{ts: ("pyjpegls", "gdcm") for ts in _JPEG_LS},
    **{ts: ("pylibjpeg", "pillow", "gdcm") for ts in _J2K},
    uids.RLELossless: ("pylibjpeg", "pydicom"),
}
_PACKAGES: dict[str, str] = {
    **{ts: "python-gdcm" for ts in (*_JPEG, *_JPEG_LS)},
    **{ts: "pylibjpeg and pylibjpeg-openjpeg" for ts in _J2K},
    uids.RLELossless: "pylibjpeg and pylibjpeg-rle",
}


@dataclass(frozen=True)
class ReadPolicy:
    """``any_modality`` lifts the CR / DX-for-presentation rule; ``min_size``: minimum Rows and Columns;
    ``max_pixels``: the most pixels an input may decode to (checked before decoding: TOO_LARGE)."""

    any_modality: bool = False
    min_size: int = 128
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if not isinstance(self.min_size, int) or self.min_size < 1:
            raise ValueError(f"min_size={self.min_size!r} must be an integer >= 1")
        SizeLimit(self.max_pixels)  # validates

    @property
    def size_limit(self) -> SizeLimit:
        return SizeLimit(self.max_pixels)


DEFAULT_POLICY = ReadPolicy()
LENIENT_POLICY = ReadPolicy(any_modality=True, min_size=1)


@dataclass(frozen=True)
class DicomImage:
    """A decoded single-frame grayscale image: ``pixels`` float32 (rows, columns) in [0, 1], 1 = bright on a
    standard display (bone), smaller than (rows, columns) when read at a reduced resolution (``need``);
    ``pixel_spacing_mm`` (row, column) in mm from ImagerPixelSpacing, else PixelSpacing, else None, as
    ``spacing_source`` says ("none" for None); ``dataset`` the header without Pixel Data (for DICOM SEG /
    SC); ``decoder`` the plugin used ("native" when uncompressed, "pillow-j2k-reduceN" / "pillow-jpeg-draft"
    for a reduced-resolution decode)."""

    pixels: np.ndarray
    study_uid: str
    series_uid: str
    sop_uid: str
    modality: str
    photometric: str
    view: str | None
    pixel_spacing_mm: tuple[float, float] | None
    transfer_syntax: str
    dataset: pydicom.Dataset
    rows: int
    columns: int
    spacing_source: str
    decoder: str


def _int(ds: pydicom.Dataset, keyword: str, default: int | None = None) -> int:
    """``keyword`` as an int; DECODE_FAILED naming the value if it is missing (no default) or not one."""
    try:
        value = ds.get(keyword)
        return default if value in (None, "") and default is not None else int(value)
    except Exception as exc:
        raise TriageError(
            ErrorCode.DECODE_FAILED, f"{keyword}={text_value(ds, keyword)!r} is missing or not an integer"
        ) from exc


def _check_modality(ds: pydicom.Dataset) -> None:
    sop, modality = text_value(ds, "SOPClassUID"), text_value(ds, "Modality")
    intent = text_value(ds, "PresentationIntentType").upper()
    found = f"Modality={modality!r}, SOPClassUID={sop!r} ({UID(sop).name if sop else 'missing'})"
    if sop == _DX_PROCESSING or intent == "FOR PROCESSING":
        found += (
            f", PresentationIntentType={intent!r} is DX 'for processing': raw detector data, not for display;"
        )
    elif modality == "CR" or (modality == "DX" and sop == _DX_PRESENTATION):
        return
    raise TriageError(ErrorCode.UNSUPPORTED_MODALITY, f"{found} not accepted; accepted: {ACCEPTED}; {_HINT}")


def _check_pixel_module(ds: pydicom.Dataset) -> None:
    """NO_PIXEL_DATA, UNSUPPORTED_PHOTOMETRIC, MULTI_FRAME or DECODE_FAILED, naming the value."""
    if "PixelData" not in ds:
        sop, floats = text_value(ds, "SOPClassUID"), "FloatPixelData" in ds or "DoubleFloatPixelData" in ds
        what = "only float Pixel Data" if floats else f"SOP class {UID(sop).name if sop else 'missing'}"
        raise TriageError(ErrorCode.NO_PIXEL_DATA, f"no (7FE0,0010) Pixel Data ({what}); an image is needed")
    photometric, samples = text_value(ds, "PhotometricInterpretation"), _int(ds, "SamplesPerPixel", 1)
    if photometric not in GRAYSCALE or samples != 1:
        message = (
            f"PhotometricInterpretation={photometric!r} with SamplesPerPixel={samples} is not supported; "
            f"valid: {' or '.join(GRAYSCALE)} with SamplesPerPixel=1 (grayscale)"
        )
        raise TriageError(ErrorCode.UNSUPPORTED_PHOTOMETRIC, message)
    frames = _int(ds, "NumberOfFrames", 1)
    if frames != 1:
        code = ErrorCode.MULTI_FRAME if frames > 1 else ErrorCode.DECODE_FAILED
        message = (
            f"NumberOfFrames={frames}: the file holds {frames} frames; valid: 1 (single-frame radiographs)"
        )
        raise TriageError(code, message)


def _check_header(ds: pydicom.Dataset, policy: ReadPolicy) -> tuple[int, int]:
    """Modality, pixel module, size and UIDs; returns (rows, columns)."""
    if not policy.any_modality:
        _check_modality(ds)
    _check_pixel_module(ds)
    rows, columns = _int(ds, "Rows"), _int(ds, "Columns")
    if min(rows, columns) < policy.min_size:
        message = f"image is {rows}×{columns} (Rows×Columns); the minimum is {policy.min_size} on each side"
        raise TriageError(ErrorCode.TOO_SMALL, message)
    for keyword in ("StudyInstanceUID", "SOPInstanceUID"):
        if not UID(value := text_value(ds, keyword)).is_valid:
            message = (
                f"{keyword}={value!r} is {'not a valid DICOM UID' if value else 'missing'} (valid: up to 64 "
                "digits and dots, no empty or zero-led components); output paths are built from it"
            )
            raise TriageError(ErrorCode.INVALID_UID, message)
    return rows, columns


def _check_codec(ds: pydicom.Dataset, ts: UID) -> None:
    """MISSING_CODEC (naming the syntax and the package) unless an installed plugin decodes ``ts``."""
    named = f"Pixel Data compressed with {ts.name} ({ts})"
    try:
        decoder = get_decoder(ts) if ts.is_compressed else None
    except (ValueError, NotImplementedError) as exc:
        message = (
            f"{named}: pydicom has no decoder for it ({exc}); convert it to Explicit VR Little Endian first"
        )
        raise TriageError(ErrorCode.MISSING_CODEC, message) from exc
    if decoder is None:
        return
    bits = _int(ds, "BitsStored", 8)
    if ts == uids.JPEGExtended12Bit and bits > 8 and "pylibjpeg" not in decoder.available_plugins:
        message = (
            f"{named}, BitsStored={bits}: GDCM and Pillow decode only 8-bit JPEG Extended and the GPL "
            "pylibjpeg-libjpeg is deliberately not shipped; convert it first (DCMTK: dcmdjpeg in.dcm out.dcm)"
        )
        raise TriageError(ErrorCode.MISSING_CODEC, message)
    if not decoder.is_available:
        missing = [d for d in decoder.missing_dependencies if "pylibjpeg-libjpeg" not in d]
        package = _PACKAGES.get(ts, " or ".join(missing) or "a pydicom decoder plugin")
        reported = "; ".join(missing) or "no licence-compatible plugin"
        message = f"{named}: no installed decoder; install {package} (pydicom reports missing: {reported})"
        raise TriageError(ErrorCode.MISSING_CODEC, message)


def _jpeg_segments_ok(frame: bytes) -> bool:
    """SOI, then well-formed marker segments up to SOS: the part of a JPEG(-LS) stream GDCM trusts."""
    i = 2
    while frame[:2] == b"\xff\xd8" and i + 4 <= len(frame) and frame[i] == 0xFF:
        if frame[i + 1] == 0xDA:
            return True
        i += 2 + int.from_bytes(frame[i + 2 : i + 4], "big")
    return False


def _check_pixel_data_size(ds: pydicom.Dataset, ts: UID, rows: int, columns: int) -> None:
    """TRUNCATED when native Pixel Data is shorter than Rows×Columns×BitsAllocated; DECODE_FAILED when a
    JPEG / JPEG-LS / J2K codestream's header is damaged or disagrees with the data set (GDCM aborts the
    process on such streams instead of raising)."""
    bits = _int(ds, "BitsAllocated")
    if bits not in (1, 8, 16, 32, 64):
        raise TriageError(
            ErrorCode.DECODE_FAILED, f"BitsAllocated={bits} is invalid; valid: 1, 8, 16, 32, 64"
        )
    if not ts.is_encapsulated and (actual := len(ds.PixelData)) < (
        expected := (rows * columns * bits + 7) // 8
    ):
        needs = f"Rows×Columns×BitsAllocated={rows}×{columns}×{bits} needs {expected}"
        raise TriageError(ErrorCode.TRUNCATED, f"Pixel Data holds {actual} bytes; {needs}")
    frame = next(generate_frames(ds.PixelData, number_of_frames=1)) if ts in _PLUGIN_ORDER else b""
    shape: tuple[object, object] = (None, None)
    if frame[:4] == b"\xff\x4f\xff\x51" and len(frame) >= 24:  # J2K SOC, SIZ: width, height, x0, y0
        x, y, x0, y0 = (int.from_bytes(frame[i : i + 4], "big") for i in (8, 12, 16, 20))
        shape = (y - y0, x - x0)
    elif ts in (*_JPEG, *_JPEG_LS):
        info = _get_jpg_parameters(frame) if _jpeg_segments_ok(frame) else {}
        if not 2 <= info.get("precision", 0) <= min(bits, 16) or info.get("components") != 1:
            raise TriageError(
                ErrorCode.DECODE_FAILED, f"damaged {ts.name} header (parsed: {info or 'nothing'})"
            )
        shape = (info.get("height"), info.get("width"))
    if all(shape) and shape != (rows, columns):
        message = f"the {ts.name} codestream is {shape[0]}×{shape[1]} but Rows×Columns is {rows}×{columns}"
        raise TriageError(ErrorCode.DECODE_FAILED, message)


def _decode(ds: pydicom.Dataset, ts: UID) -> tuple[np.ndarray, str]:
    """(stored values, plugin name), trying plugins in :data:`_PLUGIN_ORDER`; DECODE_FAILED if all fail."""
    plugins = [""]
    if ts.is_compressed:
        available = get_decoder(ts).available_plugins
        plugins = [p for p in _PLUGIN_ORDER.get(ts, ()) if p in available]
        plugins += [p for p in available if p not in plugins]
    errors: list[str] = []
    for plugin in plugins:
        if plugin == "gdcm" and errors:  # data another decoder rejected may abort the process in GDCM
            break
        try:
            return pixel_array(ds, decoding_plugin=plugin), plugin or "native"
        except FATAL:
            raise
        except BaseException as exc:  # Rust codecs raise PanicException, a BaseException
            errors.append(f"{plugin or 'native'}: {type(exc).__name__}: {safe_text(exc, 200)}")
    raise TriageError(
        ErrorCode.DECODE_FAILED, f"{ts.name} ({ts}) Pixel Data cannot be decoded: {' | '.join(errors)}"
    )


def to_display(ds: pydicom.Dataset) -> np.ndarray:
    """Run the display pipeline on ``ds``: float32 (rows, columns) in [0, 1], 1 = bright on a display.

    Raises ValueError (naming the value) for anything but single-frame grayscale integer Pixel Data.
    """
    try:
        _check_pixel_module(ds)
    except TriageError as exc:
        raise ValueError(exc.message) from exc
    return render(ds.pixel_array, ds)


def _spacing(ds: pydicom.Dataset) -> tuple[tuple[float, float] | None, str]:
    """((row, column) spacing in mm, source keyword): ImagerPixelSpacing → PixelSpacing → (None, "none")."""
    for keyword in ("ImagerPixelSpacing", "PixelSpacing"):
        value = None
        try:
            value = ds.get(keyword)
            pair = (float(value[0]), float(value[1])) if value is not None and len(value) == 2 else None
        except (TypeError, ValueError, IndexError):
            pair = None
        if pair is not None and np.isfinite(pair).all() and MIN_MM <= min(pair) <= max(pair) <= MAX_MM:
            return pair, keyword
        if value is not None:
            logger.warning(
                "%s is not a pixel spacing in [%g, %g] mm; areas are given in pixels only",
                keyword,
                MIN_MM,
                MAX_MM,
            )
    return None, "none"


def read_image(
    path: Path,
    policy: ReadPolicy = DEFAULT_POLICY,
    need: Callable[[tuple[int, int]], tuple[int, int]] | None = None,
) -> DicomImage:
    """Read and validate one DICOM radiograph; raises only TriageError (codes: module docstring).

    ``need``: (Rows, Columns) → the (rows, columns) the caller's outputs need at least; a compressed image
    may then be decoded
    at a reduced resolution ≥ that (:mod:`triage.io.reduced`): ``pixels`` is smaller than Rows × Columns,
    which ``rows`` / ``columns`` keep. None (the default) decodes the full grid.
    """
    ds: pydicom.Dataset | None = None
    try:
        ds = open_dataset(Path(path), stop_before_pixels=False, limit=policy.size_limit)
        check_decoded_size(ds, policy.size_limit)
        rows, columns = _check_header(ds, policy)
        if not (ts := UID(text_value(getattr(ds, "file_meta", pydicom.Dataset()), "TransferSyntaxUID"))):
            message = "no TransferSyntaxUID and the Pixel Data is encapsulated: the codec is unknown"
            raise TriageError(ErrorCode.DECODE_FAILED, message)
        _check_codec(ds, ts)
        _check_pixel_data_size(ds, ts, rows, columns)
        reduced = decode_reduced(ds, ts, (rows, columns), need((rows, columns))) if need else None
        stored, plugin = reduced or _decode(ds, ts)
        try:
            pixels = render(stored, ds)
        except (ValueError, TypeError, IndexError, NotImplementedError) as exc:
            message = f"display pipeline: {type(exc).__name__}: {safe_text(exc)}"
            raise TriageError(ErrorCode.DECODE_FAILED, message) from exc
        check_not_degenerate(pixels, ds, stored if stored.ndim == 2 else None)
        del stored
        logger.debug("decoded %s (%s) with %s", ts.name, ts, plugin)
        spacing, source = _spacing(ds)
        del ds.PixelData
        return DicomImage(
            pixels=pixels,
            study_uid=text_value(ds, "StudyInstanceUID"),
            series_uid=text_value(ds, "SeriesInstanceUID"),
            sop_uid=text_value(ds, "SOPInstanceUID"),
            modality=text_value(ds, "Modality"),
            photometric=text_value(ds, "PhotometricInterpretation"),
            view=text_value(ds, "ViewPosition") or None,
            pixel_spacing_mm=spacing,
            transfer_syntax=str(ts),
            dataset=ds,
            rows=rows,
            columns=columns,
            spacing_source=source,
            decoder=plugin,
        )
    except TriageError as exc:
        if ds is not None:
            exc.identifiers = patient_identifiers(ds)
        raise
    except FATAL:
        raise
    except BaseException as exc:
        error = unforeseen_error(exc)
        if ds is not None:
            error.identifiers = patient_identifiers(ds)
        raise error from exc


def read_dicom(path: Path) -> DicomImage:
    """:func:`read_image` with :data:`LENIENT_POLICY`: for tools reading files the product wrote itself."""
    return read_image(path, LENIENT_POLICY)
