"""A data set decoded once and kept on disk on a model's grid: the cache that training and evaluation read.

Every image goes through the runtime's own code — :func:`triage.io.dicom.read_image` (or the folder
format's PNG reader) → :func:`triage.cascade.preprocess.fit` — so what a model sees in training is what
it sees in a hospital; normalisation (:func:`~triage.cascade.preprocess.normalise`) is applied by the
reader of the cache, after any augmentation. Masks are placed on the grid with the same geometry.

Layout of one cache (``<cache dir>/<key>/``; the key is a hash of the source files' paths, sizes and
modification times, the label files and the grid contract, so a changed file makes a new cache)::

    index.json     ids, labels, patient keys, strata, geometry and the problem of each item
    images.npy     (N, H, W) uint16: the [0, 1] grid image × 65535
    masks.npy      (N, H, W) uint8:  pneumothorax mask on the grid (0/1)
    lungs.npy      (N, H, W) uint8:  lung mask (0/1), when the data set has lungs/
    heatmaps.npy   (N, H, W) uint8:  reading heatmap ×255, when the data set has heatmaps/

The default cache dir is ``$TRIAGE_CACHE_DIR``, else ``$XDG_CACHE_HOME/triage/grids``, else
``~/.cache/triage/grids``; delete it (or one key folder) at any time to free disk space.

A lesion never vanishes on the grid: where the grid mask at coverage ≥ 0.5 would be empty although the
source mask is not, the grid pixels with the highest coverage are kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from triage.cascade.preprocess import Geometry, fit
from triage.data import folder
from triage.data.dataset import DataItem, DataListing, LabelProblem, patient_key
from triage.data.rle import RLEError, rle_decode
from triage.errors import TriageError
from triage.io.dicom import read_image

FORMAT = "triage-grids/1"
INDEX = "index.json"
MAPS = ("masks", "lungs", "heatmaps")


@dataclass(frozen=True)
class GridSpec:
    """A model's input grid: (height, width) and how images are placed on it (``letterbox``/``stretch``)."""

    size: tuple[int, int]
    resize: str = "letterbox"

    def __post_init__(self) -> None:
        if self.resize not in ("letterbox", "stretch"):
            raise ValueError(f"resize must be letterbox or stretch, got {self.resize!r}")
        if len(self.size) != 2 or min(self.size) < 8:
            raise ValueError(f"grid size must be (height, width) >= 8, got {self.size}")

    @property
    def name(self) -> str:
        return f"{self.size[0]}x{self.size[1]}-{self.resize}"


def default_cache_dir() -> Path:
    if env := os.environ.get("TRIAGE_CACHE_DIR"):
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "triage" / "grids"


def _stat(path: Path | None) -> list[Any]:
    if path is None:
        return []
    st = path.stat()
    return [path.name, st.st_size, st.st_mtime_ns]


def cache_key(listing: DataListing, grid: GridSpec) -> str:
    """sha256 over the grid contract and every source file's name, size and mtime (+ labels, strata)."""
    h = hashlib.sha256()
    h.update(json.dumps([FORMAT, list(grid.size), grid.resize, listing.kind]).encode())
    for extra in ("train-rle.csv", "stage_2_train.csv", "metadata.csv"):
        p = listing.root / extra
        h.update(json.dumps(_stat(p if p.is_file() else None)).encode())
    for it in listing.items:
        row = [
            it.id,
            _stat(it.image),
            _stat(it.mask),
            _stat(it.lungs),
            _stat(it.heatmap),
            it.rles,
            it.patient,
        ]
        h.update(json.dumps(row).encode())
    return h.hexdigest()[:24]


def _coverage_mask(mask: NDArray[np.bool_], grid: GridSpec) -> NDArray[np.uint8]:
    cover, _ = fit(mask.astype(np.float32), grid.size, grid.resize)
    out = cover >= 0.5
    if not out.any() and mask.any():
        out = cover >= 0.5 * float(cover.max())
    return out.astype(np.uint8)


def _read_png_map(path: Path, shape: tuple[int, ...], code: str) -> NDArray[np.uint8]:
    with Image.open(path) as img:
        arr = np.asarray(img)
    if arr.ndim == 3:
        arr = arr[..., 0]
    if arr.shape != shape:
        raise _Problem(code, f"{path.name} is {arr.shape[0]}x{arr.shape[1]}, the image {shape[0]}x{shape[1]}")
    return arr.astype(np.uint8) if arr.dtype == np.uint8 else (arr > 0).astype(np.uint8) * 255


class _Problem(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class _Decoded:
    """One item decoded onto each requested grid (what a worker sends back)."""

    index: int
    problem: tuple[str, str] | None
    info: dict[str, Any]
    arrays: list[dict[str, NDArray[Any]]]


def _decode(index: int, item: DataItem, grids: Sequence[GridSpec]) -> _Decoded:
    info: dict[str, Any] = {"label": item.label, "patient": item.patient}
    try:
        if item.is_dicom:
            try:
                image = read_image(item.image)
            except TriageError as exc:
                raise _Problem("unreadable", f"{exc.code.value}: {exc.message}") from exc
            pixels = image.pixels
            info |= {"view": image.view or "", "photometric": image.photometric, "modality": image.modality}
            if not info["patient"]:
                info["patient"] = (
                    patient_key(str(image.dataset.get("PatientID", "") or "")) or f"image:{item.id}"
                )
        else:
            try:
                pixels = folder.read_image(item.image)
            except (OSError, ValueError) as exc:
                raise _Problem("unreadable", f"{type(exc).__name__}: {exc}") from exc
        shape = pixels.shape
        if item.rles is not None:
            mask = np.zeros(shape, bool)
            for rle in item.rles:
                try:
                    mask |= rle_decode(rle, shape[0], shape[1])
                except RLEError as exc:
                    raise _Problem("bad_rle", f"on a {shape[0]}x{shape[1]} image: {exc}") from exc
        elif item.mask is not None:
            mask = _read_png_map(item.mask, shape, "mask_size") > 0
        else:
            mask = np.zeros(shape, bool)
        info["label"] = int(mask.any()) if item.label == -1 else item.label
        if item.rles is not None and bool(mask.any()) != bool(item.label):
            raise _Problem("bad_rle", "the RLE decodes to an empty mask")
        lungs = _read_png_map(item.lungs, shape, "lungs_size") > 0 if item.lungs else None
        heat = _read_png_map(item.heatmap, shape, "heatmap_size") if item.heatmap else None
        info["area_fraction"] = float(mask.mean())
        out = []
        for grid in grids:
            g, geometry = fit(pixels, grid.size, grid.resize)
            arrays: dict[str, NDArray[Any]] = {
                "images": np.round(np.clip(g, 0, 1) * 65535).astype(np.uint16),
                "masks": _coverage_mask(mask, grid),
            }
            if lungs is not None:
                arrays["lungs"] = _coverage_mask(lungs, grid)
            if heat is not None:
                h, _ = fit(heat.astype(np.float32) / 255.0, grid.size, grid.resize)
                arrays["heatmaps"] = np.round(np.clip(h, 0, 1) * 255).astype(np.uint8)
            info.setdefault("geometry", []).append([list(geometry.src_shape), list(geometry.box)])
            out.append(arrays)
        return _Decoded(index, None, info, out)
    except _Problem as exc:
        return _Decoded(index, (exc.code, exc.message), info, [])
    except Exception as exc:  # one bad file never stops the build; it becomes a reported problem
        return _Decoded(index, ("unreadable", f"{type(exc).__name__}: {exc}"), info, [])


def _decode_star(args: tuple[int, DataItem, Sequence[GridSpec]]) -> _Decoded:
    return _decode(*args)


class GridSet:
    """A built cache, memory-mapped read-only. Row i is item ``ids[i]``; rows with a problem hold zeros."""

    def __init__(self, root: Path) -> None:
        self.root = root
        index = json.loads((root / INDEX).read_text(encoding="utf-8"))
        if index.get("format") != FORMAT:
            raise ValueError(f"{root}: not a grid cache ({FORMAT})")
        self.grid = GridSpec((int(index["grid"][0]), int(index["grid"][1])), index["resize"])
        self.data_root = Path(index["data"])
        self.items: list[dict[str, Any]] = index["items"]
        self.ids: list[str] = [it["id"] for it in self.items]
        self.labels = np.array([int(it["label"]) for it in self.items], np.int64)
        self.patients: list[str] = [it["patient"] for it in self.items]
        self.strata: list[dict[str, str]] = [it["strata"] for it in self.items]
        self.problems = [
            LabelProblem(it["id"], it["problem"][0], it["problem"][1]) for it in self.items if it["problem"]
        ]
        self.images: NDArray[np.uint16] = np.load(root / "images.npy", mmap_mode="r")
        self.masks: NDArray[np.uint8] = np.load(root / "masks.npy", mmap_mode="r")
        self.lungs: NDArray[np.uint8] | None = (
            np.load(root / "lungs.npy", mmap_mode="r") if (root / "lungs.npy").exists() else None
        )
        self.heatmaps: NDArray[np.uint8] | None = (
            np.load(root / "heatmaps.npy", mmap_mode="r") if (root / "heatmaps.npy").exists() else None
        )
        self._row = {image_id: i for i, image_id in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def row(self, image_id: str) -> int:
        return self._row[image_id]

    @property
    def usable(self) -> list[int]:
        """Rows without a problem."""
        return [i for i, it in enumerate(self.items) if not it["problem"]]

    def image(self, i: int) -> NDArray[np.float32]:
        """(H, W) float32 in [0, 1] on the grid: what the runtime's ``fit`` returned."""
        out: NDArray[np.float32] = self.images[i].astype(np.float32) / np.float32(65535)
        return out

    def mask(self, i: int) -> NDArray[np.bool_]:
        out: NDArray[np.bool_] = self.masks[i] > 0
        return out

    def geometry(self, i: int) -> Geometry:
        src, box = self.items[i]["geometry"]
        return Geometry((src[0], src[1]), self.grid.size, (box[0], box[1], box[2], box[3]))


def _has(listing: DataListing, attr: str) -> bool:
    return any(getattr(it, attr) is not None for it in listing.items)


def _build(
    listing: DataListing,
    grids: Sequence[GridSpec],
    targets: Sequence[Path],
    workers: int,
    on_item: Callable[[], None] | None,
) -> None:
    n = len(listing.items)
    tmps = [t.with_name(f"{t.name}.tmp-{os.getpid()}-{time.monotonic_ns()}") for t in targets]
    maps: list[dict[str, NDArray[Any]]] = []
    for tmp, grid in zip(tmps, grids, strict=True):
        tmp.mkdir(parents=True)
        shape = (n, *grid.size)
        arrays: dict[str, NDArray[Any]] = {
            "images": np.lib.format.open_memmap(tmp / "images.npy", "w+", np.uint16, shape),
            "masks": np.lib.format.open_memmap(tmp / "masks.npy", "w+", np.uint8, shape),
        }
        for name, attr in (("lungs", "lungs"), ("heatmaps", "heatmap")):
            if _has(listing, attr):
                arrays[name] = np.lib.format.open_memmap(tmp / f"{name}.npy", "w+", np.uint8, shape)
        maps.append(arrays)
    records: list[dict[str, Any]] = [{} for _ in range(n)]
    jobs = [(i, it, list(grids)) for i, it in enumerate(listing.items)]
    try:
        if workers <= 1 or n < 8:
            _collect(map(_decode_star, jobs), listing, maps, records, on_item)
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                chunk = max(1, min(16, n // (4 * workers)))
                _collect(pool.map(_decode_star, jobs, chunksize=chunk), listing, maps, records, on_item)
        for tmp, grid, arrays in zip(tmps, grids, maps, strict=True):
            for arr in arrays.values():
                if isinstance(arr, np.memmap):
                    arr.flush()
            items = []
            for rec in records:
                entry = dict(rec)
                entry["geometry"] = rec["geometry"][grids.index(grid)] if rec.get("geometry") else None
                items.append(entry)
            index = {
                "format": FORMAT,
                "grid": list(grid.size),
                "resize": grid.resize,
                "data": str(listing.root.resolve()),
                "kind": listing.kind,
                "items": items,
            }
            (tmp / INDEX).write_text(json.dumps(index) + "\n", encoding="utf-8")
        for tmp, target in zip(tmps, targets, strict=True):
            try:
                tmp.rename(target)
            except OSError:  # another process built it meanwhile: keep theirs
                shutil.rmtree(tmp, ignore_errors=True)
    finally:
        for tmp in tmps:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def _collect(
    results: Any,
    listing: DataListing,
    maps: list[dict[str, NDArray[Any]]],
    records: list[dict[str, Any]],
    on_item: Callable[[], None] | None,
) -> None:
    for dec in results:
        it = listing.items[dec.index]
        records[dec.index] = {
            "id": it.id,
            "label": int(dec.info.get("label", it.label)),
            "patient": dec.info.get("patient") or f"image:{it.id}",
            "strata": {
                **{k: str(dec.info[k]) for k in ("view", "photometric", "modality") if dec.info.get(k)},
                **it.strata,
            },
            "area_fraction": dec.info.get("area_fraction", 0.0),
            "has_lungs": it.lungs is not None,
            "has_heatmap": it.heatmap is not None,
            "problem": list(dec.problem) if dec.problem else None,
            "geometry": dec.info.get("geometry"),
        }
        for arrays, decoded in zip(maps, dec.arrays, strict=False):
            for name, value in decoded.items():
                arrays[name][dec.index] = value
        if on_item is not None:
            on_item()


def ensure_grids(
    listing: DataListing,
    grids: Sequence[GridSpec],
    cache_dir: Path | None = None,
    *,
    workers: int = 1,
    on_total: Callable[[int], None] | None = None,
    on_item: Callable[[], None] | None = None,
) -> list[GridSet]:
    """The cache of ``listing`` on each grid, building the missing ones in one decoding pass.

    ``on_total(n)`` is called with the number of images to decode (0 when every grid is cached).
    """
    base = cache_dir or default_cache_dir()
    unique = list(dict.fromkeys(grids))
    targets = [base / f"{cache_key(listing, g)}-{g.name}" for g in unique]
    missing = [(g, t) for g, t in zip(unique, targets, strict=True) if not (t / INDEX).is_file()]
    if on_total is not None:
        on_total(len(listing.items) if missing else 0)
    if missing:
        base.mkdir(parents=True, exist_ok=True)
        _build(listing, [g for g, _ in missing], [t for _, t in missing], workers, on_item)
    sets = {g: GridSet(t) for g, t in zip(unique, targets, strict=True)}
    return [sets[g] for g in grids]
