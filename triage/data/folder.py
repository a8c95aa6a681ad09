"""The simple folder dataset format.

Layout::

    DIR/images/<id>.png   8- or 16-bit grayscale radiograph (required)
    DIR/masks/<id>.png    pneumothorax mask: 0 = background, nonzero = pneumothorax
    DIR/lungs/<id>.png    optional relevant-region (lung) mask, nonzero = inside

Labelling rule: when ``DIR/masks/`` exists, a missing ``masks/<id>.png`` means a
*negative* image (no pneumothorax), so negatives need no mask files. When
``DIR/masks/`` does not exist at all the folder is *unlabelled*: items list with
``labelled=False`` and :func:`read_item` refuses them rather than silently calling
every image negative (use :func:`read_image`). Only ``*.png`` files are
considered; a mask or lung file with no matching image is an error (likely a
naming mistake).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

__all__ = [
    "FolderFormatError",
    "FolderItem",
    "list_folder_items",
    "read_image",
    "read_item",
    "read_lungs",
    "read_mask",
    "validate_item_id",
    "write_item",
]

_8BIT_MODES = ("L",)
_16BIT_MODES = ("I;16", "I;16L", "I;16B", "I")
_MASK_MODES = ("1", "L", *_16BIT_MODES)


class FolderFormatError(ValueError):
    """A folder dataset that does not follow the documented layout."""


@dataclass(frozen=True)
class FolderItem:
    """One image of a folder dataset.

    Attributes:
        id: the file name stem shared by image, mask and lung files.
        image: path of ``images/<id>.png``.
        mask: path of ``masks/<id>.png``, or None (negative if ``labelled``).
        lungs: path of ``lungs/<id>.png``, or None.
        labelled: whether ``DIR/masks/`` exists, so that ``mask=None`` means negative.
    """

    id: str
    image: Path
    mask: Path | None
    lungs: Path | None
    labelled: bool = True


def validate_item_id(item_id: str) -> str:
    """Return ``item_id`` if it is usable as a file name stem, else raise ValueError.

    Rejected: empty, ``.``, ``..``, anything containing ``..``, ``/``, ``\\`` or NUL.
    """
    if not item_id or item_id in (".", "..") or ".." in item_id or any(c in item_id for c in "/\\\x00"):
        raise ValueError(
            f"invalid item id {item_id!r}: must be a non-empty file name stem without path separators or '..'"
        )
    return item_id


def _stems(directory: Path) -> dict[str, Path]:
    if not directory.is_dir():
        return {}
    return {p.stem: p for p in sorted(directory.glob("*.png")) if p.is_file()}


def list_folder_items(root: str | Path) -> list[FolderItem]:
    """List the items of a folder dataset, sorted by id.

    Raises:
        FileNotFoundError: when ``root/images`` is not a directory.
        FolderFormatError: when a mask or lung file has no matching image.
    """
    root = Path(root)
    images_dir = root / "images"
    if not images_dir.is_dir():
        raise FileNotFoundError(f"{images_dir} is not a directory; expected DIR/images/<id>.png")
    images = _stems(images_dir)
    labelled = (root / "masks").is_dir()
    masks = _stems(root / "masks")
    lungs = _stems(root / "lungs")
    for kind, files in (("masks", masks), ("lungs", lungs)):
        orphans = sorted(set(files) - set(images))
        if orphans:
            shown = ", ".join(orphans[:5]) + (" ..." if len(orphans) > 5 else "")
            raise FolderFormatError(
                f"{root / kind}: {len(orphans)} file(s) without a matching images/<id>.png: {shown}"
            )
    return [
        FolderItem(id=i, image=p, mask=masks.get(i), lungs=lungs.get(i), labelled=labelled)
        for i, p in images.items()
    ]


def read_image(path: str | Path) -> NDArray[np.float32]:
    """Read an 8- or 16-bit grayscale PNG as (H, W) float32 in [0, 1].

    8-bit values are divided by 255, 16-bit values by 65535.

    Raises:
        FolderFormatError: for any other PIL mode (e.g. RGB, palette), naming the
            mode and the accepted ones.
    """
    with Image.open(path) as img:
        mode = img.mode
        if mode not in _8BIT_MODES + _16BIT_MODES:
            raise FolderFormatError(
                f"{path}: image mode {mode!r} is not 8- or 16-bit grayscale; "
                f"expected one of {list(_8BIT_MODES + _16BIT_MODES)}"
            )
        arr = np.asarray(img)
    if mode in _8BIT_MODES:
        return (arr.astype(np.float32) / np.float32(255)).astype(np.float32)
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise FolderFormatError(f"{path}: 16-bit image values outside [0, 65535]")
    return (arr.astype(np.float32) / np.float32(65535)).astype(np.float32)


def read_mask(path: str | Path) -> NDArray[np.bool_]:
    """Read a mask PNG as (H, W) bool (nonzero = True).

    Raises:
        FolderFormatError: for a PIL mode other than 1, L or 16-bit grayscale.
    """
    with Image.open(path) as img:
        if img.mode not in _MASK_MODES:
            raise FolderFormatError(
                f"{path}: mask mode {img.mode!r} is not accepted; expected one of {list(_MASK_MODES)}"
            )
        mask: NDArray[np.bool_] = np.asarray(img) != 0
    return mask


def _check_size(item_id: str, what: str, image_shape: tuple[int, ...], other_shape: tuple[int, ...]) -> None:
    if image_shape != other_shape:
        raise FolderFormatError(
            f"item {item_id}: {what} size {_hxw(other_shape)} (HxW) differs from "
            f"image size {_hxw(image_shape)}"
        )


def _hxw(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def read_item(item: FolderItem) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """Read one labelled item.

    Returns:
        image: (H, W) float32 in [0, 1].
        mask: (H, W) bool, all False when the item has no mask file (a negative).

    Raises:
        FolderFormatError: unlabelled item (no ``masks/`` directory), unsupported
            PNG mode, or mask size different from image size (naming the id and
            both sizes).
    """
    if not item.labelled:
        raise FolderFormatError(
            f"item {item.id}: dataset has no masks/ directory, so it is unlabelled; "
            "use read_image for unlabelled data"
        )
    image = read_image(item.image)
    if item.mask is None:
        return image, np.zeros(image.shape, dtype=np.bool_)
    mask = read_mask(item.mask)
    _check_size(item.id, "mask", image.shape, mask.shape)
    return image, mask


def read_lungs(item: FolderItem, image_shape: tuple[int, int]) -> NDArray[np.bool_] | None:
    """Read the item's lung mask as (H, W) bool, or None when it has none.

    Raises:
        FolderFormatError: when its size differs from ``image_shape`` (H, W).
    """
    if item.lungs is None:
        return None
    lungs = read_mask(item.lungs)
    _check_size(item.id, "lung mask", image_shape, lungs.shape)
    return lungs


def _to_png_array(item_id: str, image: NDArray[np.generic]) -> NDArray[np.uint8] | NDArray[np.uint16]:
    if image.dtype == np.uint8 or image.dtype == np.uint16:
        return image  # type: ignore[return-value]
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(
            f"item {item_id}: image dtype {image.dtype} not supported; use uint8, uint16 or float in [0, 1]"
        )
    if image.size and not (np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0):
        raise ValueError(f"item {item_id}: float image values must be finite and within [0, 1]")
    return np.round(image.astype(np.float64) * 65535).astype(np.uint16)


def write_item(
    root: str | Path,
    item_id: str,
    image: NDArray[np.generic],
    mask: NDArray[np.generic],
    lungs: NDArray[np.generic] | None = None,
) -> FolderItem:
    """Write one item in folder format, creating the directories.

    Args:
        root: dataset directory DIR.
        item_id: file name stem (validated by :func:`validate_item_id`).
        image: (H, W) uint8 (written 8-bit), uint16 (16-bit) or float in [0, 1]
            (written 16-bit, rounded to the nearest of 65535 steps).
        mask: (H, W) bool/integer, nonzero = pneumothorax; always written (as 0/255
            8-bit), even when empty, so the file states the label explicitly.
        lungs: optional (H, W) lung mask, written like ``mask``.

    Returns:
        The written item.

    Raises:
        ValueError: invalid id, non-2-D or unsupported image, or size mismatch.
    """
    validate_item_id(item_id)
    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"item {item_id}: image must be 2-D (H, W), got shape {img.shape}")
    png = _to_png_array(item_id, img)
    masks = {"masks": np.asarray(mask)} | ({} if lungs is None else {"lungs": np.asarray(lungs)})
    for kind, arr in masks.items():
        _check_size(item_id, "mask" if kind == "masks" else "lung mask", img.shape, arr.shape)
    root = Path(root)
    paths: dict[str, Path] = {}
    for kind, arr in (("images", png), *masks.items()):
        out = root / kind / f"{item_id}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        data = arr if kind == "images" else np.where(arr != 0, 255, 0).astype(np.uint8)
        Image.fromarray(np.ascontiguousarray(data)).save(out)
        paths[kind] = out
    return FolderItem(id=item_id, image=paths["images"], mask=paths["masks"], lungs=paths.get("lungs"))
