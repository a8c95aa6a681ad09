"""How big an image will be once decoded, known before decoding: the guard against memory bombs.

A 300 KB JPEG 2000 file can declare 65535×65535 pixels; an RLE, deflated or sparse file can expand to
gigabytes from a few hundred kilobytes.  Every size is therefore checked *before* a decoder (or pydicom's
inflater) allocates anything:

* :func:`check_decoded_size` — the header (Rows × Columns × NumberOfFrames × SamplesPerPixel, and the
  same times BitsAllocated in bytes) and, for encapsulated Pixel Data, the first frame's codestream
  (:func:`codestream_shape`: JPEG 2000 SIZ, JPEG / JPEG-LS SOF) against a :class:`SizeLimit`;
* :func:`check_file_size` — a file larger than the limit's bytes (a sparse file with a huge Pixel Data
  element reads it all into memory);
* :func:`check_inflated_size` — a deflated data set is inflated in a bounded stream first (pydicom
  inflates the whole data set at once).

All raise ``TriageError(TOO_LARGE)`` naming the attribute and the limit.  The reader
(:func:`triage.io.dicom.read_image`) calls them; a reduced-resolution decoder should call
:func:`check_decoded_size` too before asking a codec for any level.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import BinaryIO

import pydicom
from pydicom.encaps import generate_frames

from triage.errors import ErrorCode, TriageError

DEFAULT_MAX_PIXELS = 40_000_000  # 6324² pixels: every radiograph detector (4300×4300 is ~18.5 M) fits
_HEADROOM = 16 * 2**20  # bytes of header, overlays and private data allowed on top of the pixels
_CHUNK = 2**20


@dataclass(frozen=True)
class SizeLimit:
    """``max_pixels``: the most pixels (Rows × Columns × frames × samples) an input may decode to; the
    byte limit is that at 32 bits per pixel plus 16 MiB of headroom (:attr:`max_bytes`)."""

    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if not isinstance(self.max_pixels, int) or self.max_pixels < 1:
            raise ValueError(f"max_pixels={self.max_pixels!r} must be an integer >= 1")

    @property
    def max_bytes(self) -> int:
        return 4 * self.max_pixels + _HEADROOM


DEFAULT_LIMIT = SizeLimit()


def _too_large(what: str, limit: SizeLimit) -> TriageError:
    message = (
        f"{what} exceeds the limit of {limit.max_pixels:,} pixels ({limit.max_bytes:,} bytes); "
        "raise --max-pixels if such images are expected"
    )
    return TriageError(ErrorCode.TOO_LARGE, message)


def _header_int(ds: pydicom.Dataset, keyword: str, default: int) -> int:
    try:
        value = ds.get(keyword)
        return default if value in (None, "") else max(int(value), 0)
    except (TypeError, ValueError):
        return default  # the reader's own checks name a bad value; here only the size matters


def _j2k_shape(data: bytes) -> tuple[int, int, int] | None:
    """(rows, columns, components) from a JPEG 2000 codestream's SIZ marker (also inside a JP2 file)."""
    start = data.find(b"\xff\x4f\xff\x51", 0, 4096)
    siz = data[start + 4 : start + 42] if start >= 0 else b""
    if len(siz) < 38:
        return None
    x, y, x0, y0 = (int.from_bytes(siz[i : i + 4], "big") for i in (4, 8, 12, 16))
    components = int.from_bytes(siz[36:38], "big")
    return max(y - y0, 0), max(x - x0, 0), components


_SOF = frozenset({*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0), 0xF7})


def _jpeg_shape(data: bytes) -> tuple[int, int, int] | None:
    """(rows, columns, components) from a JPEG or JPEG-LS stream's SOF segment (marker segments walked
    from SOI; None if the stream has none before its first scan)."""
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _SOF and i + 10 <= len(data):
            rows, columns = (int.from_bytes(data[j : j + 2], "big") for j in (i + 5, i + 7))
            return rows, columns, data[i + 9]
        if marker == 0xDA:
            return None
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def codestream_shape(frame: bytes) -> tuple[int, int, int] | None:
    """(rows, columns, components) a compressed frame declares: JPEG 2000 / HTJ2K (SIZ), JPEG and
    JPEG-LS (SOF); None for other data (RLE, whose size follows Rows × Columns) or a damaged header."""
    return _j2k_shape(frame) or _jpeg_shape(frame)


def first_frame(ds: pydicom.Dataset) -> bytes:
    """The first frame of encapsulated Pixel Data (b"" when there is none or it cannot be parsed)."""
    try:
        return next(generate_frames(ds.PixelData, number_of_frames=1), b"")
    except Exception:
        return b""  # the decoder reports a damaged encapsulation; here only the size matters


def check_decoded_size(ds: pydicom.Dataset, limit: SizeLimit) -> None:
    """TOO_LARGE when ``ds`` would decode to more than ``limit`` allows, by its header (Rows, Columns,
    NumberOfFrames, SamplesPerPixel, BitsAllocated) or by its first frame's codestream (which a decoder
    follows, whatever the header says).  Reads no pixels beyond the first frame's marker segments."""
    rows, columns = _header_int(ds, "Rows", 0), _header_int(ds, "Columns", 0)
    frames, samples = _header_int(ds, "NumberOfFrames", 1) or 1, _header_int(ds, "SamplesPerPixel", 1) or 1
    bits = _header_int(ds, "BitsAllocated", 16)
    pixels = rows * columns * frames * samples
    if pixels > limit.max_pixels or pixels * max(bits, 8) // 8 > limit.max_bytes:
        what = f"Rows×Columns×NumberOfFrames×SamplesPerPixel={rows}×{columns}×{frames}×{samples}"
        raise _too_large(f"{what} (BitsAllocated={bits})", limit)
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if "PixelData" not in ds or ts is None or not pydicom.uid.UID(str(ts)).is_encapsulated:
        return
    shape = codestream_shape(first_frame(ds))
    if shape is not None and shape[0] * shape[1] * max(shape[2], 1) * frames > limit.max_pixels:
        what = f"the codestream's {shape[0]}×{shape[1]}×{shape[2]} (rows×columns×components)"
        raise _too_large(what, limit)


def check_file_size(size: int, limit: SizeLimit) -> None:
    """TOO_LARGE when a file of ``size`` bytes exceeds the limit's bytes (it would be read whole)."""
    if size > limit.max_bytes:
        raise _too_large(f"the file's {size:,} bytes", limit)


def check_inflated_size(fh: BinaryIO, limit: SizeLimit) -> None:
    """TOO_LARGE when the raw-deflated stream from ``fh``'s position inflates to more than the limit's
    bytes; inflates in 1 MiB steps, keeping nothing, and restores the position."""
    start = fh.tell()
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    try:
        while chunk := fh.read(_CHUNK):
            data = inflater.decompress(chunk, _CHUNK)
            while True:
                total += len(data)
                if total > limit.max_bytes:
                    raise _too_large("the deflated data set", limit)
                if not inflater.unconsumed_tail:
                    break
                data = inflater.decompress(inflater.unconsumed_tail, _CHUNK)
            if inflater.eof:
                break
    except zlib.error:
        pass  # damaged: pydicom's own inflation reports it
    finally:
        fh.seek(start)
