"""``triage train thresholds``: choose the gate and the triplet on out-of-fold predictions and write them
into the runs' cards, where ``triage export`` (and ``triage evaluate`` on runs) picks them up.

Input: a classifier CV folder and a segmenter CV folder (``triage train ... --fold all``), trained on the
same data with the same folds. Every image of the data set then has an out-of-fold gate probability and
an out-of-fold segmenter map; the search (:mod:`triage.evaluation.search`) maximises the cascade's mean
Dice per image over all of them.

Output: the classifier runs' cards get ``{"gate": g, "chosen_by": ...}``, the segmenter runs' cards
``{"top", "min_area", "bottom", "min_component", "grid": "model", "chosen_by": ...}`` (the format of the
bundle card's ``thresholds``, split by the model each value belongs to); ``chosen_by.pair`` repeats the
whole joint choice. Also ``SEG_CV/thresholds.json`` with the search and its surface summary.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from training.oof import read_classifier_oof, read_segmenter_oof
from training.prepare import DataError
from training.run import fold_runs
from training.run_format import read_run_card, write_run_card
from triage.evaluation.search import SearchGrid, SearchResult, search

TRIPLET_KEYS = ("top", "min_area", "bottom", "min_component")


class LazyMaps(Sequence[NDArray[Any]]):
    """Maps gathered from several memory-mapped OOF arrays: (array, row) per image, read on access."""

    def __init__(self, parts: list[tuple[NDArray[Any], int]]) -> None:
        self.parts = parts

    def __len__(self) -> int:
        return len(self.parts)

    def __getitem__(self, i: int) -> NDArray[Any]:  # type: ignore[override]
        arr, row = self.parts[i]
        return arr[row]


@dataclass(frozen=True)
class CascadeOOF:
    """Per image (joined by image id): fold, label, gate probabilities and segmenter maps, all out of fold."""

    ids: list[str]
    folds: NDArray[np.int64]
    labels: NDArray[np.int64]
    prob: NDArray[np.float64]
    prob_tta: NDArray[np.float64]
    seg: LazyMaps
    seg_tta: LazyMaps
    truth: LazyMaps

    def subset(self, index: NDArray[np.intp]) -> CascadeOOF:
        pick = [int(i) for i in index]
        return CascadeOOF(
            [self.ids[i] for i in pick],
            self.folds[index],
            self.labels[index],
            self.prob[index],
            self.prob_tta[index],
            LazyMaps([self.seg.parts[i] for i in pick]),
            LazyMaps([self.seg_tta.parts[i] for i in pick]),
            LazyMaps([self.truth.parts[i] for i in pick]),
        )


def load_oof(segmenter_cv: Path, classifier_cv: Path | None = None) -> CascadeOOF:
    """Join the OOF predictions of a segmenter CV folder (and a classifier CV folder, when given)."""
    seg_ids: list[str] = []
    folds, labels = [], []
    seg, seg_tta, truth = [], [], []
    for k, run in enumerate(fold_runs(segmenter_cv)):
        oof = read_segmenter_oof(run)
        fold = read_run_card(run).provenance.get("fold", k)
        for row, image_id in enumerate(oof.ids):
            seg_ids.append(image_id)
            folds.append(int(fold))
            labels.append(int(oof.labels[row]))
            seg.append((oof.seg, row))
            seg_tta.append((oof.seg_tta, row))
            truth.append((oof.truth, row))
    if len(set(seg_ids)) != len(seg_ids):
        raise DataError(f"{segmenter_cv}: an image appears in two folds' out-of-fold predictions")
    n = len(seg_ids)
    prob, prob_tta = np.ones(n), np.ones(n)
    if classifier_cv is not None:
        found: dict[str, tuple[float, float, int]] = {}
        for k, run in enumerate(fold_runs(classifier_cv)):
            c = read_classifier_oof(run)
            fold = int(read_run_card(run).provenance.get("fold", k))
            for i, image_id in enumerate(c.ids):
                found[image_id] = (float(c.probability[i]), float(c.probability_tta[i]), fold)
        missing = [i for i in seg_ids if i not in found]
        if missing or len(found) != n:
            raise DataError(
                f"{classifier_cv} and {segmenter_cv} were not cross-validated on the same images "
                f"({len(found)} vs {n} out-of-fold images, e.g. {missing[:1]}); train both on the same --data"
            )
        moved = [image_id for image_id, f in zip(seg_ids, folds, strict=True) if found[image_id][2] != f]
        if moved:
            raise DataError(
                f"{classifier_cv} and {segmenter_cv} used different folds (e.g. image {moved[0]}); "
                "train both with the same --folds on the same data"
            )
        prob = np.array([found[i][0] for i in seg_ids])
        prob_tta = np.array([found[i][1] for i in seg_ids])
    return CascadeOOF(
        seg_ids,
        np.array(folds),
        np.array(labels),
        prob,
        prob_tta,
        LazyMaps(seg),
        LazyMaps(seg_tta),
        LazyMaps(truth),
    )


def search_oof(
    oof: CascadeOOF, *, tta: bool = True, gated: bool = True, triplet: bool = True
) -> SearchResult:
    grid_shape = oof.truth[0].shape
    grid = SearchGrid.triplet(grid_shape) if triplet else SearchGrid.single()
    maps = oof.seg_tta if tta else oof.seg
    prob = (oof.prob_tta if tta else oof.prob) if gated else None
    return search(prob, maps, oof.truth, grid)


def choose(
    classifier_cv: Path, segmenter_cv: Path, *, tta: bool = True
) -> tuple[dict[str, Any], SearchResult]:
    """The thresholds block (bundle card format) chosen on the OOF predictions of the two CV folders."""
    oof = load_oof(segmenter_cv, classifier_cv)
    result = search_oof(oof, tta=tta)
    folds = len(set(oof.folds.tolist()))
    block = {
        **result.thresholds,
        "grid": "model",
        "chosen_by": {
            "data": read_run_card(fold_runs(segmenter_cv)[0]).provenance.get("data", "?"),
            "metric": "dice_per_image",
            "value": round(result.value, 6),
            "folds": folds,
            "images": result.images,
            "oof": "out-of-fold predictions of the fold runs",
            "tta": tta,
            "classifier": str(classifier_cv.resolve()),
            "segmenter": str(segmenter_cv.resolve()),
            "search": {k: list(getattr(result.grid, k)) for k in ("gate", *TRIPLET_KEYS)},
        },
    }
    return block, result


def write_thresholds(
    block: dict[str, Any], classifier_runs: Sequence[Path], segmenter_runs: Sequence[Path]
) -> None:
    """Write the gate into each classifier run's card and the triplet into each segmenter run's card."""
    chosen_by = {**block["chosen_by"], "pair": {k: block[k] for k in ("gate", *TRIPLET_KEYS)}}
    for run in classifier_runs:
        card = read_run_card(run)
        if card.role != "classifier":
            raise DataError(f"{run} is a {card.role} run; the gate belongs to a classifier run")
        write_run_card(run, _replace(card, {"gate": block["gate"], "chosen_by": chosen_by}))
    for run in segmenter_runs:
        card = read_run_card(run)
        if card.role not in ("segmenter", "baseline"):
            raise DataError(f"{run} is a {card.role} run; the triplet belongs to a segmenter run")
        write_run_card(
            run,
            _replace(card, {**{k: block[k] for k in TRIPLET_KEYS}, "grid": "model", "chosen_by": chosen_by}),
        )


def _replace(card: Any, thresholds: dict[str, Any]) -> Any:
    from dataclasses import replace

    return replace(card, thresholds=thresholds)


def save_search(path: Path, block: dict[str, Any], result: SearchResult) -> None:
    gate_curve = result.surface.reshape(len(result.grid.gate), -1).max(axis=1)
    payload = {
        "thresholds": block,
        "value": result.value,
        "best_by_gate": {f"{g:g}": float(v) for g, v in zip(result.grid.gate, gate_curve, strict=True)},
    }
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
