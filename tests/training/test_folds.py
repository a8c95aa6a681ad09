from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

import pytest

from training.folds import FoldRow, make_folds, read_folds_csv, write_folds_csv


def _table(n_patients: int = 200, seed: int = 0) -> list[tuple[str, str, int]]:
    """1-4 images per patient; ~25% of patients positive (all their images positive)."""
    rng = random.Random(seed)
    table = []
    for p in range(n_patients):
        label = int(rng.random() < 0.25)
        for j in range(rng.randint(1, 4)):
            table.append((f"img{p:04d}_{j}", f"pat{p:04d}", label))
    return table


def test_no_patient_spans_two_folds() -> None:
    table = _table()
    folds = make_folds(table, k=5, seed=0)
    assert set(folds) == {r[0] for r in table}
    assert set(folds.values()) == set(range(5))
    patient_folds: dict[str, set[int]] = defaultdict(set)
    for image_id, patient, _ in table:
        patient_folds[patient].add(folds[image_id])
    assert all(len(f) == 1 for f in patient_folds.values())


def test_folds_are_stratified() -> None:
    table = _table()
    folds = make_folds(table, k=5, seed=0)
    overall = sum(r[2] for r in table) / len(table)
    for fold in range(5):
        labels = [r[2] for r in table if folds[r[0]] == fold]
        assert len(labels) > len(table) / 10
        assert abs(sum(labels) / len(labels) - overall) < 0.02


def test_deterministic_for_seed_and_row_order() -> None:
    table = _table()
    folds = make_folds(table, k=5, seed=7)
    assert make_folds(list(reversed(table)), k=5, seed=7) == folds
    assert make_folds(table, k=5, seed=8) != folds


@pytest.mark.parametrize("k", [1, 4])
def test_k_out_of_range(k: int) -> None:
    table = [("a", "p1", 0), ("b", "p2", 1), ("c", "p3", 0), ("d", "p3", 1)]
    with pytest.raises(ValueError, match=rf"number of patients \(3\), got k={k}"):
        make_folds(table, k=k)


def test_bad_table_rows() -> None:
    with pytest.raises(ValueError, match="duplicate image_id 'a'"):
        make_folds([("a", "p1", 0), ("a", "p2", 1)], k=2)
    with pytest.raises(ValueError, match="label must be 0 or 1, got 2"):
        make_folds([("a", "p1", 0), ("b", "p2", 2)], k=2)


def test_csv_round_trip(tmp_path: Path) -> None:
    table = _table(30)
    folds = make_folds(table, k=3, seed=0)
    path = tmp_path / "folds.csv"
    write_folds_csv(path, table, folds)
    assert path.read_text().splitlines()[0] == "image_id,patient_id,label,fold"
    rows = read_folds_csv(path)
    assert rows == [FoldRow(i, p, y, folds[i]) for i, p, y in table]


def test_read_detects_patient_leak_and_bad_columns(tmp_path: Path) -> None:
    path = tmp_path / "folds.csv"
    path.write_text("image_id,patient_id,label,fold\na,p1,0,0\nb,p1,1,1\n")
    with pytest.raises(ValueError, match="patient 'p1' appears in folds 0 and 1"):
        read_folds_csv(path)
    path.write_text("image_id,label,fold\na,0,0\n")
    with pytest.raises(ValueError, match=r"found columns \['image_id', 'label', 'fold'\]"):
        read_folds_csv(path)
    path.write_text("image_id,patient_id,label,fold\na,p1,yes,0\n")
    with pytest.raises(ValueError, match=r"folds.csv:2: label and fold must be integers"):
        read_folds_csv(path)
