"""SIIM-ACR pneumothorax run-length encoding (RLE).

The SIIM-ACR competition RLE differs from the usual Kaggle RLE in two ways:

* pixels are enumerated in **column-major** order, i.e. ``mask.T.flatten()``:
  index ``i`` is pixel ``(row = i % height, col = i // height)``;
* the string holds pairs ``offset length`` where the first offset is the 0-based
  start index of the first run, and every later offset is *relative*: the number
  of background pixels between the end of the previous run and the start of this one.

Decoding is therefore::

    pos = 0
    for offset, length in pairs:
        pos += offset
        flat[pos:pos + length] = 1
        pos += length
    mask = flat.reshape(width, height).T

``"-1"`` (or an empty string) is an empty mask. Example: on a 1024x1024 image
``"810584 20 1003 22"`` sets rows 600..619 of column 791, then 22 pixels starting
at row 599 of column 792.
"""

from __future__ import annotations

import re

import numpy as np
from numpy.typing import NDArray

__all__ = ["EMPTY_RLE", "RLEError", "rle_decode", "rle_encode"]

EMPTY_RLE = "-1"
"""The RLE string of an empty mask (no pneumothorax)."""


class RLEError(ValueError):
    """A malformed RLE string, or one that does not fit the stated image size."""


def rle_encode(mask: NDArray[np.bool_] | NDArray[np.integer]) -> str:
    """Encode a 2-D mask as a SIIM-ACR relative, column-major RLE string.

    Args:
        mask: (H, W) bool or integer array; any nonzero pixel is foreground.

    Returns:
        ``"-1"`` for an empty mask, else space-separated ``offset length`` pairs
        (canonical: runs are maximal, so every offset after the first is >= 1).

    Raises:
        ValueError: when ``mask`` is not 2-D or not bool/integer.
    """
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {arr.shape}")
    if arr.dtype != np.bool_ and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"mask must be bool or integer, got dtype {arr.dtype}; threshold it first")
    flat = (arr != 0).T.ravel()  # column-major pixel order
    padded = np.concatenate(([False], flat, [False])).view(np.int8)
    edges = np.diff(padded)
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    if starts.size == 0:
        return EMPTY_RLE
    offsets = starts.copy()
    offsets[1:] = starts[1:] - ends[:-1]
    pairs = np.empty(2 * starts.size, dtype=np.int64)
    pairs[0::2] = offsets
    pairs[1::2] = ends - starts
    return " ".join(map(str, pairs.tolist()))


_INT_TOKEN = re.compile(r"-?[0-9]+")


def _parse_tokens(rle: str) -> list[int]:
    tokens = rle.split()
    for tok in tokens:
        if _INT_TOKEN.fullmatch(tok) is None:
            raise RLEError(f"RLE has a non-integer token {tok!r}; expected space-separated integers")
    if len(tokens) % 2:
        raise RLEError(f"RLE has an odd number of values ({len(tokens)}); expected 'offset length' pairs")
    return [int(tok) for tok in tokens]


def rle_decode(rle: str, height: int, width: int) -> NDArray[np.bool_]:
    """Decode a SIIM-ACR relative, column-major RLE string.

    Args:
        rle: ``"-1"``, an empty/whitespace string, or space-separated ``offset length`` pairs.
        height: image height H in pixels (> 0).
        width: image width W in pixels (> 0).

    Returns:
        (H, W) bool mask, C-contiguous.

    Raises:
        RLEError: odd number of values, non-integer tokens, a negative offset (the
            first would start before the image; a later one would overlap the
            previous run), a negative or zero length, or a run past the image end.
        ValueError: when height or width is not a positive integer.

    A later offset of 0 (two touching runs) is accepted, though ``rle_encode``
    never produces it.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"height and width must be positive, got height={height}, width={width}")
    n_pixels = height * width
    text = rle.strip()
    if text in ("", EMPTY_RLE):
        return np.zeros((height, width), dtype=np.bool_)
    parsed = _parse_tokens(text)
    too_big = next((v for v in parsed if abs(v) > n_pixels), None)
    if too_big is not None:
        raise RLEError(
            f"RLE value {too_big} is out of range for a {height}x{width} image: |value| must be <= "
            f"{n_pixels}, or the run would lie outside the image"
        )
    values = np.asarray(parsed, dtype=np.int64)
    offsets = values[0::2]
    lengths = values[1::2]

    if offsets[0] < 0:
        raise RLEError(
            f"RLE first offset {offsets[0]} is negative; the first run would start before the image"
        )
    neg_off = np.flatnonzero(offsets < 0)
    if neg_off.size:
        i = int(neg_off[0])
        raise RLEError(
            f"RLE pair {i} has negative offset {offsets[i]}: offsets count background pixels since the "
            "end of the previous run, so a negative one makes runs overlap"
        )
    bad_len = np.flatnonzero(lengths <= 0)
    if bad_len.size:
        i = int(bad_len[0])
        kind = "zero-length run" if lengths[i] == 0 else f"negative length {lengths[i]}"
        raise RLEError(f"RLE pair {i} has a {kind}; lengths must be >= 1")

    # Absolute positions: start_i = sum(offsets[:i+1]) + sum(lengths[:i]).
    ends = np.cumsum(offsets + lengths)
    starts = ends - lengths
    if ends[-1] > n_pixels:
        i = int(np.argmax(ends > n_pixels))
        raise RLEError(
            f"RLE run {i} (pixels {starts[i]}..{ends[i] - 1}) runs past the image end "
            f"({height}x{width} = {n_pixels} pixels); is this absolute rather than relative RLE, "
            "or the wrong image size?"
        )

    # Starts and ends are each strictly increasing, so plain fancy-index updates are exact.
    delta = np.zeros(n_pixels + 1, dtype=np.int8)
    delta[starts] += 1
    delta[ends] -= 1
    flat = np.cumsum(delta[:-1], dtype=np.int8).astype(np.bool_)
    return np.ascontiguousarray(flat.reshape(width, height).T)
