"""Decode a compressed radiograph at a reduced resolution: only the pixels the outputs need.

The models read 224–256 px grids and the overlay is at most 1024 px; SEG, SR and the records need only
the source grid's geometry (Rows × Columns, from the header). Decoding a 2048² lossless JPEG 2000 image
at full resolution costs ~0.7 s of CPU here; its resolution levels decode at 1/2, 1/4, 1/8 ... of that
size from the same codestream (the wavelet's low-pass bands), ~0.14 / 0.04 / 0.01 s. Baseline JPEG
scales in the DCT domain (libjpeg's 1/2, 1/4, 1/8 IDCT) the same way.

:func:`decode_reduced` picks the smallest level whose size is still ≥ ``need`` on both axes and returns
the stored values at that size, or None when it does not apply (nothing to gain, another transfer
syntax, signed or > 16-bit data, a level the stream lacks, a decoder error): the caller then decodes the
full image as before. Decoders: Pillow's OpenJPEG (``Image.reduce``) for JPEG 2000 / HTJ2K, Pillow's
libjpeg ``draft`` for baseline 8-bit JPEG.

What changes: the reduced image is the codec's low-pass of the source, not PIL's antialiased bilinear
resize of it, so the model inputs made from it differ slightly from those of the full decode. The
cascade asks for twice each model's content size (``triage.cascade.items.decode_need``), so that PIL's
resize still makes the last step: on 2048² synthetic radiographs, mean |Δ| 0.0035 and max 0.15 of the
[0, 1] input range (0.010 / 0.41 when decoding at exactly the content size); the overlay (box filter
from the 1024-px level instead of from 2048 px) mean 0.006. tests/triage/test_reduced_decode.py fails
beyond mean 0.01 / max 0.2 on the inputs and 0.02 on the gate probability. The min–max VOI fallback
(no window, no VOI LUT) sees the low-pass's extremes.
"""

from __future__ import annotations

import io
import logging
import math

import numpy as np
import pydicom
from PIL import Image
from pydicom import uid as uids
from pydicom.encaps import generate_frames
from pydicom.uid import UID

logger = logging.getLogger(__name__)

J2K = (uids.JPEG2000Lossless, uids.JPEG2000, uids.HTJ2KLossless, uids.HTJ2KLosslessRPCL, uids.HTJ2K)
JPEG_BASELINE = (uids.JPEGBaseline8Bit,)
MAX_LEVELS = 5  # 1/32: deeper levels are rarely in the stream and never needed for 224-1024 px outputs


def levels_for(source: tuple[int, int], need: tuple[int, int], max_levels: int = MAX_LEVELS) -> int:
    """The most halvings r (≤ ``max_levels``) with ceil(source / 2**r) ≥ ``need`` on both axes (the size
    of JPEG 2000's resolution level r and of libjpeg's 1/2**r DCT scaling)."""
    levels = 0
    while levels < max_levels and all(
        math.ceil(s / 2 ** (levels + 1)) >= n for s, n in zip(source, need, strict=True)
    ):
        levels += 1
    return levels


def _j2k(frame: bytes, levels: int, precision: int) -> np.ndarray:
    image = Image.open(io.BytesIO(frame))
    image.reduce = levels  # type: ignore[method-assign,assignment]  # Jpeg2KImageFile's decode option
    image.load()
    if image.mode not in ("L", "I;16"):
        raise ValueError(f"Pillow decoded mode {image.mode!r}; expected L or I;16")
    out = np.asarray(image)
    shift = (8 if image.mode == "L" else 16) - precision  # Pillow scales samples to the mode's full range
    return out >> shift if shift > 0 else out


def _jpeg(frame: bytes, size: tuple[int, int]) -> np.ndarray:
    image = Image.open(io.BytesIO(frame))
    if image.mode != "L":
        raise ValueError(f"Pillow decoded mode {image.mode!r}; expected L")
    image.draft("L", (size[1], size[0]))  # the smallest DCT scaling ≥ (width, height)
    return np.asarray(image)


def decode_reduced(
    ds: pydicom.Dataset, ts: UID, source: tuple[int, int], need: tuple[int, int]
) -> tuple[np.ndarray, str] | None:
    """(stored values at the smallest level ≥ ``need``, decoder name) or None (see the module docstring).

    ``source``: (Rows, Columns) of the data set, already checked against the codestream by the reader.
    """
    if ts not in (*J2K, *JPEG_BASELINE) or int(ds.get("PixelRepresentation", 0) or 0) != 0:
        return None
    precision = int(ds.get("BitsStored", 0) or 0)
    if not 1 <= precision <= (8 if ts in JPEG_BASELINE else 16):
        return None
    levels = levels_for(source, need)
    if levels == 0:
        return None
    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        size = tuple(math.ceil(s / 2**levels) for s in source)
        if ts in J2K:
            stored, name = _j2k(frame, levels, precision), f"pillow-j2k-reduce{levels}"
        else:
            stored, name = _jpeg(frame, (size[0], size[1])), "pillow-jpeg-draft"
    except Exception as exc:  # a level the stream lacks, a damaged stream: the full decode decides
        logger.debug("reduced decode not used: %s: %s", type(exc).__name__, exc)
        return None
    if stored.ndim != 2 or any(got < n for got, n in zip(stored.shape, need, strict=True)):
        logger.debug("reduced decode gave %s, below %s: not used", stored.shape, need)
        return None
    return stored, name
