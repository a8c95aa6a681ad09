"""Run a :class:`~triage.evaluation.models.Cascade` over a labelled data set once, keeping what the report
sections need: the gate probability and CAM of every image, and the segmenter's probability map of every
image (not only the gated ones, so that any gate threshold can be evaluated), on the segmenter's grid.

Inputs come from the grid cache (:mod:`triage.data.gridcache`: the runtime's reader and ``fit``), then
the runtime's ``normalise`` per the model's card. Maps are written to float16 memory-mapped files in a
work folder, so memory does not grow with the data set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from triage.bundle import ModelSpec
from triage.cascade.models import normalised_cam
from triage.cascade.preprocess import normalise
from triage.data.dataset import DataListing, LabelProblem, list_dataset
from triage.data.gridcache import GridSet, GridSpec, ensure_grids
from triage.evaluation.models import Cascade
from triage.synth.lesions import stratum_of


@dataclass
class Predictions:
    listing: DataListing
    problems: list[LabelProblem]
    rows: list[int]  # rows of the grid caches that were evaluated (images without problems)
    ids: list[str]
    labels: NDArray[np.int64]
    strata: list[dict[str, str]]
    probability: NDArray[np.float64]  # (N,) gate probability (ones without a classifier)
    cams: NDArray[np.float16] | None  # (N, h, w) ReLU(CAM)/max, memory-mapped
    seg: NDArray[np.float16] | None  # (N, H, W) pixel probabilities on the segmenter grid, memory-mapped
    cls_grid: GridSet | None
    seg_grid: GridSet | None
    tta: bool

    def __len__(self) -> int:
        return len(self.ids)

    def truth(self, i: int) -> NDArray[np.bool_]:
        """Ground truth of image i on the segmenter grid."""
        assert self.seg_grid is not None
        return self.seg_grid.mask(self.rows[i])


def size_stratum(label: int, area_fraction: float) -> str:
    """The synthetic phantom's size strata (small < 0.5 % of the image, medium < 2 %, large)."""
    return "none" if not label else stratum_of(area_fraction)


def _batches(n: int, size: int) -> list[range]:
    return [range(i, min(n, i + size)) for i in range(0, n, size)]


def collect(
    cascade: Cascade,
    data: Path,
    work: Path,
    cache_dir: Path | None = None,
    *,
    use_tta: bool = True,
    batch_size: int = 8,
    workers: int = 1,
    on_total: Callable[[int], None] | None = None,
    on_done: Callable[[int], None] | None = None,
) -> Predictions:
    """Predict every usable image of ``data``; ``on_done(k)`` after each batch of k images."""
    listing = list_dataset(data)
    specs: list[ModelSpec] = [s for s in (cascade.classifier, cascade.segmenter) if s is not None]
    grids = ensure_grids(
        listing, [GridSpec(s.input_size, s.resize) for s in specs], cache_dir, workers=workers
    )
    by_role = {s.role: g for s, g in zip(specs, grids, strict=True)}
    cls_grid, seg_grid = by_role.get("classifier"), by_role.get("segmenter")
    any_grid = grids[0]
    problems = [*listing.problems, *any_grid.problems]
    bad = {p.item for p in any_grid.problems}
    rows = [i for i, image_id in enumerate(any_grid.ids) if image_id not in bad]
    n = len(rows)
    if n == 0:
        raise ValueError(f"{data}: no usable labelled images to evaluate")
    work.mkdir(parents=True, exist_ok=True)
    probability = np.ones(n)
    cams: NDArray[np.float16] | None = None
    seg: NDArray[np.float16] | None = None
    if seg_grid is not None:
        seg = np.lib.format.open_memmap(work / "seg.npy", "w+", np.float16, (n, *seg_grid.grid.size))
    if on_total is not None:
        on_total(n)
    for chunk in _batches(n, batch_size):
        batch_rows = [rows[i] for i in chunk]
        if cls_grid is not None and cascade.classifier is not None:
            x = np.stack([normalise(cls_grid.image(r), cascade.classifier) for r in batch_rows])
            prob, cam = cascade.gate(x, use_tta)
            probability[chunk.start : chunk.stop] = prob
            if cam is not None:
                if cams is None:
                    cams = np.lib.format.open_memmap(work / "cam.npy", "w+", np.float16, (n, *cam.shape[1:]))
                cams[chunk.start : chunk.stop] = normalised_cam(cam)
        if seg_grid is not None and cascade.segmenter is not None and seg is not None:
            x = np.stack([normalise(seg_grid.image(r), cascade.segmenter) for r in batch_rows])
            seg[chunk.start : chunk.stop] = cascade.segment(x, use_tta)
        if on_done is not None:
            on_done(len(chunk))
    for arr in (seg, cams):
        if arr is not None:
            arr.flush()  # type: ignore[attr-defined]
    strata = []
    for r in rows:
        item = any_grid.items[r]
        s = dict(item["strata"])
        s.setdefault("size_stratum", size_stratum(int(item["label"]), float(item.get("area_fraction", 0.0))))
        if s.get("drain") in ("0", "1"):
            s["drain"] = "yes" if s["drain"] == "1" else "no"
        strata.append({k: v for k, v in s.items() if k in STRATA})
    return Predictions(
        listing=listing,
        problems=problems,
        rows=rows,
        ids=[any_grid.ids[r] for r in rows],
        labels=any_grid.labels[rows],
        strata=strata,
        probability=probability,
        cams=cams,
        seg=seg,
        cls_grid=cls_grid,
        seg_grid=seg_grid,
        tta=use_tta,
    )


# The strata reported (those present in the data): the four, then the acquisition.
STRATA = ("size_stratum", "drain", "view", "photometric", "modality")
