"""Labelled data sets are listed with every label problem reported per item, and decoded once into the grid
cache with the runtime's own reader and preprocessing."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from triage.cascade.preprocess import fit
from triage.data import folder
from triage.data.dataset import list_dataset
from triage.data.gridcache import GridSpec, cache_key, ensure_grids
from triage.io.dicom import read_image
from triage.synth.dataset import SynthRequest, read_metadata, synthesize


@pytest.fixture(scope="module")
def synth_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("listing") / "set"
    synthesize(SynthRequest(out, studies=10, positive_fraction=0.5, size=128, seed=5), workers=1)
    return out


def test_siim_problems_are_reported_per_item(synth_set: Path, tmp_path: Path) -> None:
    data = tmp_path / "bad"
    shutil.copytree(synth_set, data)
    rows = read_metadata(data)
    lines = (data / "train-rle.csv").read_text().splitlines()
    positive = next(r["image_id"] for r in rows if r["label"] == "1")
    dropped = next(r["image_id"] for r in rows if r["image_id"] != positive)
    kept = [ln for ln in lines if not ln.startswith(dropped)]
    kept = [
        ln if not ln.startswith(positive) else f"{positive}, 16000 900" for ln in kept
    ]  # runs off the image
    kept.append("1.2.3.4.5, -1")  # a label row without its DICOM
    (data / "train-rle.csv").write_text("\n".join(kept) + "\n")
    listing = list_dataset(data)
    assert {(p.item, p.code) for p in listing.problems} == {("1.2.3.4.5", "no_image"), (dropped, "no_label")}
    assert len(listing.items) == len(rows) - 1
    [grids] = ensure_grids(listing, [GridSpec((64, 64))], tmp_path / "cache")
    assert [(p.item, p.code) for p in grids.problems] == [(positive, "bad_rle")]
    assert len(grids.usable) == len(rows) - 2


def test_grid_cache_is_the_runtime_preprocessing(synth_set: Path, tmp_path: Path) -> None:
    listing = list_dataset(synth_set)
    grid = GridSpec((64, 48), "letterbox")
    [grids] = ensure_grids(listing, [grid], tmp_path / "cache")
    rows = read_metadata(synth_set)
    for i, item in enumerate(listing.items[:4]):
        expected, geometry = fit(read_image(item.image).pixels, grid.size, grid.resize)
        np.testing.assert_allclose(grids.image(i), expected, atol=1 / 65535)
        assert grids.geometry(i) == geometry
        meta = next(r for r in rows if r["image_id"] == item.id)
        assert int(grids.labels[i]) == int(meta["label"]) and grids.patients[i] == meta["patient_id"]
        assert grids.mask(i).any() == (meta["label"] == "1")  # a lesion never vanishes on the grid
        assert (
            grids.strata[i]["view"] == meta["view"] and grids.strata[i]["photometric"] == meta["photometric"]
        )
    assert grids.lungs is not None and grids.heatmaps is not None
    # a second call reuses the cache; a touched source file makes a new key
    seen: list[int] = []
    again = ensure_grids(listing, [grid], tmp_path / "cache", on_total=seen.append)
    assert seen == [0] and again[0].root == grids.root
    before = cache_key(listing, grid)
    listing.items[0].image.touch()
    assert cache_key(list_dataset(synth_set), grid) != before


def test_folder_format_problems_and_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(4):
        mask = np.zeros((40, 40), bool)
        if i % 2:
            mask[10:20, 10:20] = True
        folder.write_item(tmp_path, f"img{i}", rng.uniform(0, 1, (40, 40)), mask)
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(tmp_path / "masks" / "img0.png")  # wrong size
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "masks" / "orphan.png")  # no image
    listing = list_dataset(tmp_path)
    assert [(p.item, p.code) for p in listing.problems] == [("orphan", "no_image")]
    [grids] = ensure_grids(listing, [GridSpec((32, 32))], tmp_path / "cache")
    assert [(p.item, p.code) for p in grids.problems] == [("img0", "mask_size")]
    assert [int(grids.labels[grids.row(f"img{i}")]) for i in (1, 2, 3)] == [
        1,
        0,
        1,
    ]  # empty mask file = negative


def test_unlabelled_or_unknown_layouts_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(ValueError, match="no masks/"):
        list_dataset(tmp_path)
    with pytest.raises(ValueError, match="neither the SIIM-ACR layout"):
        list_dataset(tmp_path / "images")
