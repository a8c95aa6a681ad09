from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from triage.data.folder import (
    FolderFormatError,
    list_folder_items,
    read_image,
    read_item,
    read_lungs,
    write_item,
)


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_8bit_image_scaling_and_mask(tmp_path: Path) -> None:
    _save(tmp_path / "images" / "a.png", np.array([[0, 51], [255, 102]], dtype=np.uint8))
    _save(tmp_path / "masks" / "a.png", np.array([[0, 7], [0, 0]], dtype=np.uint8))
    (item,) = list_folder_items(tmp_path)
    image, mask = read_item(item)
    assert image.dtype == np.float32
    np.testing.assert_allclose(image, [[0.0, 0.2], [1.0, 0.4]], rtol=1e-6)
    np.testing.assert_array_equal(mask, [[False, True], [False, False]])


def test_16bit_image_scaling(tmp_path: Path) -> None:
    _save(tmp_path / "images" / "b.png", np.array([[0, 65535], [13107, 1]], dtype=np.uint16))
    image = read_image(tmp_path / "images" / "b.png")
    np.testing.assert_allclose(image, [[0.0, 1.0], [0.2, 1 / 65535]], rtol=1e-6)


def test_missing_mask_is_negative_when_masks_dir_exists(tmp_path: Path) -> None:
    _save(tmp_path / "images" / "neg.png", np.full((3, 4), 9, dtype=np.uint8))
    (tmp_path / "masks").mkdir()
    (item,) = list_folder_items(tmp_path)
    assert item.mask is None and item.labelled
    _image, mask = read_item(item)
    assert mask.shape == (3, 4) and not mask.any()


def test_no_masks_dir_is_unlabelled(tmp_path: Path) -> None:
    _save(tmp_path / "images" / "u.png", np.zeros((2, 2), dtype=np.uint8))
    (item,) = list_folder_items(tmp_path)
    assert not item.labelled
    with pytest.raises(FolderFormatError, match=r"item u: .*unlabelled"):
        read_item(item)


def test_listing_sorted_with_lungs_and_ignores_non_png(tmp_path: Path) -> None:
    for i in ("b", "a", "c"):
        _save(tmp_path / "images" / f"{i}.png", np.zeros((2, 2), dtype=np.uint8))
    _save(tmp_path / "masks" / "b.png", np.zeros((2, 2), dtype=np.uint8))
    _save(tmp_path / "lungs" / "c.png", np.ones((2, 2), dtype=np.uint8))
    (tmp_path / "images" / "notes.txt").write_text("x")
    items = list_folder_items(tmp_path)
    assert [i.id for i in items] == ["a", "b", "c"]
    assert [i.mask is not None for i in items] == [False, True, False]
    assert [i.lungs is not None for i in items] == [False, False, True]
    lungs = read_lungs(items[2], (2, 2))
    assert lungs is not None and lungs.all()
    assert read_lungs(items[0], (2, 2)) is None


def test_orphan_mask_is_an_error(tmp_path: Path) -> None:
    _save(tmp_path / "images" / "a.png", np.zeros((2, 2), dtype=np.uint8))
    _save(tmp_path / "masks" / "typo.png", np.zeros((2, 2), dtype=np.uint8))
    with pytest.raises(FolderFormatError, match="typo"):
        list_folder_items(tmp_path)


def test_missing_images_dir(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="images"):
        list_folder_items(tmp_path)


def test_size_mismatch_names_id_and_sizes(tmp_path: Path) -> None:
    _save(tmp_path / "images" / "x.png", np.zeros((3, 4), dtype=np.uint8))
    _save(tmp_path / "masks" / "x.png", np.zeros((4, 3), dtype=np.uint8))
    (item,) = list_folder_items(tmp_path)
    with pytest.raises(FolderFormatError, match=r"item x: mask size 4x3 .* image size 3x4"):
        read_item(item)
    with pytest.raises(ValueError, match=r"item y: mask size 2x2 .* image size 3x4"):
        write_item(tmp_path, "y", np.zeros((3, 4), np.uint8), np.zeros((2, 2), bool))


def test_rgb_image_rejected(tmp_path: Path) -> None:
    _save(tmp_path / "images" / "rgb.png", np.zeros((2, 2, 3), dtype=np.uint8))
    with pytest.raises(FolderFormatError, match=r"'RGB'.*expected one of"):
        read_image(tmp_path / "images" / "rgb.png")


@pytest.mark.parametrize("bad_id", ["", ".", "..", "../x", "a/b", "a\\b", "a..b"])
def test_bad_ids_rejected(tmp_path: Path, bad_id: str) -> None:
    with pytest.raises(ValueError, match="invalid item id"):
        write_item(tmp_path, bad_id, np.zeros((2, 2), np.uint8), np.zeros((2, 2), bool))
    assert not (tmp_path / "images").exists()


def test_write_read_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image = rng.random((5, 7)).astype(np.float32)
    mask = rng.random((5, 7)) < 0.4
    lungs = rng.random((5, 7)) < 0.5
    written = write_item(tmp_path, "r1", image, mask, lungs)
    write_item(tmp_path, "r2", (image * 255).astype(np.uint8), np.zeros((5, 7), bool))
    items = list_folder_items(tmp_path)
    assert items[0] == written
    got_image, got_mask = read_item(items[0])
    # float images are written as 16-bit: error at most half a step.
    assert np.abs(got_image - image).max() <= 0.5 / 65535 + 1e-7
    np.testing.assert_array_equal(got_mask, mask)
    np.testing.assert_array_equal(read_lungs(items[0], (5, 7)), lungs)
    got8, mask8 = read_item(items[1])
    np.testing.assert_array_equal(np.round(got8 * 255).astype(np.uint8), (image * 255).astype(np.uint8))
    assert items[1].mask is not None and not mask8.any()


def test_write_rejects_out_of_range_float(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"within \[0, 1\]"):
        write_item(tmp_path, "f", np.full((2, 2), 1.5), np.zeros((2, 2), bool))
