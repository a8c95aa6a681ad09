"""One input through reading and preprocessing (runs in reader threads), and its inference result."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from triage.bundle import Bundle, ModelSpec
from triage.cascade.preprocess import Geometry, as_pil, fit, normalise
from triage.errors import ErrorCode, TriageError
from triage.io.dicom import DicomImage, ReadPolicy, read_image
from triage.outputs.formats import PICTURE_FORMATS
from triage.outputs.overlay import overlay_base

# What an item keeps of the decoded source image once its model inputs are made (see `load_item`).
Keep = Literal["full", "overlay", "none"]
_DROPPED = np.zeros((0, 0), np.float32)  # DicomImage.pixels once released: rows/columns keep the grid
_DROPPED.flags.writeable = False


def pixels_to_keep(formats: Iterable[str]) -> Keep:
    """The least of the source image the writers need for ``formats``: a picture output needs the image
    at the overlay's size, the others (SEG, SR, records) only its grid."""
    return "overlay" if PICTURE_FORMATS & set(formats) else "none"


@dataclass
class Prepared:
    """A model input (C, H, W) and where the image sits on that model's grid."""

    x: NDArray[np.float32]
    geometry: Geometry


def same_input_contract(a: ModelSpec, b: ModelSpec) -> bool:
    """Whether two models take identical inputs (size, resize, channels, normalisation)."""
    return (a.input_size, a.resize, a.channels, a.normalization) == (
        b.input_size,
        b.resize,
        b.channels,
        b.normalization,
    )


def prepare(pixels: NDArray[np.float32], spec: ModelSpec, pil: Image.Image | None = None) -> Prepared:
    """The model input of ``pixels`` for ``spec``; ``pil``: ``as_pil(pixels)`` if the caller has it."""
    grid, geometry = fit(pixels, spec.input_size, spec.resize, pil)
    return Prepared(normalise(grid, spec), geometry)


@dataclass
class Item:
    """An input file on its way through the cascade. `error` set means it stops here."""

    input: str
    image: DicomImage | None = None
    error: TriageError | None = None
    gate_input: Prepared | None = None
    seg_input: Prepared | None = None
    sal_input: Prepared | None = None  # the saliency model's input (is gate_input when the contracts agree)
    timings_ms: dict[str, float] = field(default_factory=dict)
    # filled by inference
    probability: float | None = None
    gated: bool = False
    cam: NDArray[np.float32] | None = None  # (h, w) on the classifier's output grid, [0, 1]
    seg_prob: NDArray[np.float32] | None = None  # (H, W) on the segmenter's grid
    saliency: NDArray[np.float32] | None = None  # (h, w) of the saliency model, [0, 1]
    display: NDArray[np.float32] | None = None  # the image at the overlay's size when only that is kept

    @property
    def source_shape(self) -> tuple[int, int]:
        """(rows, columns) of the source pixel grid (the mask's grid), whatever is kept of the image."""
        return self._image.rows, self._image.columns

    @property
    def _image(self) -> DicomImage:
        if self.image is None:
            raise ValueError("this input was not read (or failed to read): it has no image")
        return self.image

    @property
    def picture(self) -> NDArray[np.float32]:
        """The image to draw an overlay from: the shrunk copy if that is what was kept, else the source."""
        image = self._image
        if self.display is not None:
            return self.display
        if image.pixels.size == 0:
            raise ValueError("the source image was released after preprocessing (load_item keep='none')")
        return image.pixels


def load_item(path: str, bundle: Bundle, policy: ReadPolicy, keep: Keep = "full") -> Item:
    """Read and preprocess one input; never raises (errors end up in `Item.error`).

    keep: what the item holds of the decoded image (float32, 16 MB at 2048²) once the model inputs are
    made: "full" the source grid; "overlay" only the copy an overlay is drawn from (`Item.display`,
    4 MB at most); "none" nothing (SEG, SR and records need only the grid, `Item.source_shape`). The
    pipeline asks for the least its output formats need (`pixels_to_keep`), so that the images in its
    queues cost little memory.
    """
    item = Item(input=path)
    t0 = time.perf_counter()
    try:
        item.image = read_image(Path(path), policy)
        t1 = time.perf_counter()
        pixels = item.image.pixels
        pil = as_pil(pixels)  # made once for every resize below
        item.gate_input = prepare(pixels, bundle.classifier, pil)
        item.seg_input = prepare(pixels, bundle.segmenter, pil)
        if bundle.saliency is not None:
            item.sal_input = (
                item.gate_input
                if same_input_contract(bundle.saliency, bundle.classifier)
                else prepare(pixels, bundle.saliency, pil)
            )
        if keep != "full":
            if keep == "overlay":
                item.display = overlay_base(pixels, pil=pil)
            item.image = replace(item.image, pixels=_DROPPED)
        item.timings_ms = {"read": 1000 * (t1 - t0), "preprocess": 1000 * (time.perf_counter() - t1)}
    except TriageError as exc:
        item.error = exc
    except Exception as exc:  # a crash inside one file never ends the batch
        item.error = TriageError(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")
    return item
