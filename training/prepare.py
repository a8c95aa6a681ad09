"""Before training: list the data set, decode it into the grid cache, report label problems, split folds.

Every problem is reported per item (``label_problems.csv`` in the run folder) with counts before any
training starts; training refuses to start while there are problems unless they are dropped
(``--drop-bad-labels``).
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from training.folds import make_folds, read_folds_csv
from triage.data.dataset import PROBLEM_CODES, LabelProblem, list_dataset
from triage.data.gridcache import GridSet, GridSpec, ensure_grids
from triage.system import usable_cores


class DataError(ValueError):
    """A data set that cannot be trained on as asked; the message is one line saying why and what to do."""


@dataclass(frozen=True)
class Prepared:
    grids: GridSet
    problems: list[LabelProblem]  # listing + decoding problems
    rows: list[int]  # usable rows (problems dropped)

    @property
    def counts(self) -> Counter[str]:
        return Counter(p.code for p in self.problems)


def prepare(
    data: Path,
    grid: GridSpec,
    cache_dir: Path | None = None,
    *,
    workers: int = 0,
    on_total: Callable[[int], None] | None = None,
    on_item: Callable[[], None] | None = None,
    extra_grids: tuple[GridSpec, ...] = (),
) -> Prepared:
    """List ``data``, build (or reuse) its grid cache, and collect every label problem."""
    try:
        listing = list_dataset(data)
    except ValueError as exc:
        raise DataError(str(exc)) from exc
    if not listing.items:
        raise DataError(f"--data {data}: no labelled images found")
    grids = ensure_grids(
        listing,
        [grid, *extra_grids],
        cache_dir,
        workers=workers or usable_cores(),
        on_total=on_total,
        on_item=on_item,
    )[0]
    problems = [*listing.problems, *grids.problems]
    bad = {p.item for p in grids.problems}
    rows = [i for i, image_id in enumerate(grids.ids) if image_id not in bad]
    return Prepared(grids, problems, rows)


def write_problems(path: Path, problems: list[LabelProblem]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image_id", "problem", "meaning", "details"])
        for p in problems:
            w.writerow([p.item, p.code, PROBLEM_CODES.get(p.code, ""), p.message])


def problem_summary(problems: list[LabelProblem]) -> str:
    counts = Counter(p.code for p in problems)
    return ", ".join(f"{code}: {n}" for code, n in sorted(counts.items()))


def assign_folds(prep: Prepared, k: int, data: Path, seed: int = 0) -> dict[str, int]:
    """Patient-level stratified folds of the usable images: ``DATA/folds.csv`` (``triage folds``) when it
    exists with ``k`` folds, else :func:`training.folds.make_folds` with ``seed``."""
    g = prep.grids
    table = [(g.ids[i], g.patients[i], int(g.labels[i])) for i in prep.rows]
    given = data / "folds.csv"
    if given.is_file():
        try:
            rows = read_folds_csv(given)
        except ValueError as exc:
            raise DataError(str(exc)) from exc
        found = sorted({r.fold for r in rows})
        if found != list(range(k)):
            raise DataError(
                f"{given} has folds {found}, not 0..{k - 1}: pass --folds {len(found)} or remove the file"
            )
        folds = {r.image_id: r.fold for r in rows}
        missing = [image_id for image_id, _, _ in table if image_id not in folds]
        if missing:
            raise DataError(
                f"{given} has no fold for {len(missing)} image(s), e.g. {missing[0]}; "
                "re-run `triage folds` or remove the file"
            )
        return {image_id: folds[image_id] for image_id, _, _ in table}
    try:
        return make_folds(table, k=k, seed=seed)
    except ValueError as exc:
        raise DataError(f"--folds {k}: {exc}") from exc


@dataclass(frozen=True)
class Split:
    train: list[int]
    val: list[int]  # validation rows for the role (positives only for the segmenter)
    oof: list[int]  # rows to predict out of fold (every image of the held-out fold)


def split(prep: Prepared, role: str, folds: dict[str, int] | None, fold: int | None, k: int) -> Split:
    """Rows for ``role`` on ``fold`` (None: all usable images, no validation)."""
    g = prep.grids
    positives_only = role == "segmenter"
    if positives_only and not any(g.labels[i] for i in prep.rows):
        raise DataError(
            f"no positive images in {g.data_root}: the segmenter trains on positive images only "
            "(pneumothorax masks); check the labels"
        )
    if fold is None or folds is None:
        train = [i for i in prep.rows if g.labels[i] or not positives_only]
        return Split(train, [], [])
    if not 0 <= fold < k:
        raise DataError(f"--fold {fold} is out of range for --folds {k}; valid: 0..{k - 1}, all, or full")
    held = [i for i in prep.rows if folds[g.ids[i]] == fold]
    rest = [i for i in prep.rows if folds[g.ids[i]] != fold]
    if not held or not rest:
        raise DataError(
            f"fold {fold} of {k} is empty ({len(held)} held-out, {len(rest)} training images); "
            "use fewer folds"
        )
    mine = [i for i in rest if g.labels[i] or not positives_only]
    inner = set(inner_validation(g, mine, fold))
    train = [i for i in mine if i not in inner]
    val = [i for i in mine if i in inner]
    if positives_only and (not train or not val):
        raise DataError(
            f"fold {fold} of {k} has {len(train)} positive training and {len(val)} positive validation "
            "images; the segmenter needs both: use fewer folds or more positive images"
        )
    return Split(train, val, held)


INNER_FRACTION = 0.15


def inner_validation(g: GridSet, rows: list[int], fold: int, fraction: float = INNER_FRACTION) -> list[int]:
    """The inner validation rows (epoch selection) drawn from a fold's *training* rows: about ``fraction``
    of the positive and of the negative images, whole patients at a time, in an order fixed by a hash of
    the patient and the fold. The held-out fold is never used to choose the epoch it is scored with."""
    by_patient: dict[str, list[int]] = {}
    for i in rows:
        by_patient.setdefault(g.patients[i], []).append(i)
    order = sorted(by_patient, key=lambda p: hashlib.sha256(f"{fold}:{p}".encode()).hexdigest())
    chosen: list[int] = []
    for positive in (True, False):
        group = [p for p in order if any(bool(g.labels[i]) for i in by_patient[p]) == positive]
        want = max(1, round(fraction * sum(len(by_patient[p]) for p in group))) if group else 0
        taken = 0
        for p in group[:-1] if len(group) > 1 else []:  # leave at least one patient to train on
            if taken >= want:
                break
            chosen += by_patient[p]
            taken += len(by_patient[p])
    return sorted(chosen)
