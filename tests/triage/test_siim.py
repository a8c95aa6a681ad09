from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from triage.data.rle import rle_decode
from triage.data.siim import (
    SIIMFormatError,
    decode_image_masks,
    find_dicoms,
    read_rle_csv,
    write_rle_csv,
)

STAGE1 = "ImageId, EncodedPixels\n1.2.3.neg, -1\n1.2.3.pos, 0 2 2 1\n1.2.3.pos, 10 2\n1.2.3.one, 5 1\n"
STAGE2 = "ImageId,EncodedPixels\n1.2.3.neg,-1\n1.2.3.pos,0 2 2 1\n1.2.3.pos,10 2\n1.2.3.one,5 1\n"
EXPECTED = {"1.2.3.neg": [], "1.2.3.pos": ["0 2 2 1", "10 2"], "1.2.3.one": ["5 1"]}


@pytest.mark.parametrize(
    "text",
    [STAGE1, STAGE2, "\ufeff" + STAGE1, "\ufeff" + STAGE2, STAGE2.replace("\n", "\r\n")],
    ids=["stage1", "stage2", "stage1-bom", "stage2-bom", "crlf"],
)
def test_read_both_stages(tmp_path: Path, text: str) -> None:
    path = tmp_path / "labels.csv"
    path.write_text(text, encoding="utf-8", newline="")
    labels = read_rle_csv(path)
    assert labels == EXPECTED
    assert list(labels) == ["1.2.3.neg", "1.2.3.pos", "1.2.3.one"]


def test_multi_row_image_is_union() -> None:
    # 4x4 image, column-major: "0 2 2 1" -> pixels 0,1 and 4 -> (0,0),(1,0),(0,1);
    # "10 2" -> pixels 10,11 -> column 2, rows 2,3.
    mask = decode_image_masks(["0 2 2 1", "10 2"], 4, 4, "img")
    expected = np.zeros((4, 4), dtype=bool)
    expected[[0, 1, 0, 2, 3], [0, 0, 1, 2, 2]] = True
    np.testing.assert_array_equal(mask, expected)
    assert not decode_image_masks([], 4, 4, "neg").any()


def test_decode_error_names_image_id() -> None:
    with pytest.raises(SIIMFormatError, match=r"ImageId 1\.2\.bad .*odd number of values"):
        decode_image_masks(["0 2", "5"], 4, 4, "1.2.bad")


def test_negative_and_positive_conflict(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("ImageId,EncodedPixels\nA,-1\nB,-1\nA,3 4\n", encoding="utf-8")
    with pytest.raises(SIIMFormatError, match="ImageId A is listed both as -1"):
        read_rle_csv(path)
    path.write_text("ImageId,EncodedPixels\nA,3 4\nA, -1\n", encoding="utf-8")
    with pytest.raises(SIIMFormatError, match="ImageId A is listed both"):
        read_rle_csv(path)


def test_missing_column_names_found_and_expected(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("ImageId,Pixels\nA,-1\n", encoding="utf-8")
    with pytest.raises(SIIMFormatError, match=r"found columns \['ImageId', 'Pixels'\].*EncodedPixels"):
        read_rle_csv(path)


def test_write_stage1_exact_format(tmp_path: Path) -> None:
    # 4x4; two regions touching only diagonally are one 8-connected region.
    diag = np.zeros((4, 4), dtype=bool)
    diag[0, 0] = diag[1, 1] = True
    two = np.zeros((4, 4), dtype=bool)
    two[0, 0] = True  # index 0
    two[3, 3] = True  # index 15
    path = tmp_path / "out.csv"
    write_rle_csv(path, [("neg", np.zeros((4, 4), bool)), ("diag", diag), ("two", two)])
    assert path.read_text(encoding="utf-8") == (
        "ImageId, EncodedPixels\nneg, -1\ndiag, 0 1 4 1\ntwo, 0 1\ntwo, 15 1\n"
    )


def test_write_stage2_exact_format(tmp_path: Path) -> None:
    mask = np.zeros((4, 4), dtype=np.uint8)
    mask[0, 0] = 1
    path = tmp_path / "out.csv"
    write_rle_csv(path, [("a", mask), ("b", np.zeros((4, 4), np.uint8))], stage=2)
    assert path.read_text(encoding="utf-8") == "ImageId,EncodedPixels\na,0 1\nb,-1\n"


@pytest.mark.parametrize("stage", [1, 2])
def test_write_read_round_trip(tmp_path: Path, stage: int) -> None:
    rng = np.random.default_rng(1)
    masks = {f"img{i}": rng.random((16, 12)) < p for i, p in enumerate([0.0, 0.05, 0.3])}
    path = tmp_path / "out.csv"
    write_rle_csv(path, masks.items(), stage=stage)  # type: ignore[arg-type]
    labels = read_rle_csv(path)
    assert labels["img0"] == []
    assert len(labels["img1"]) > 1  # sparse random mask -> several regions, several rows
    for image_id, mask in masks.items():
        np.testing.assert_array_equal(decode_image_masks(labels[image_id], 16, 12, image_id), mask)
        for rle in labels[image_id]:  # each row is one non-empty region
            assert rle_decode(rle, 16, 12).any()


def test_write_rejects_bad_stage_and_ids(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="stage must be 1 or 2, got 3"):
        write_rle_csv(tmp_path / "x.csv", [], stage=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'a,b'"):
        write_rle_csv(tmp_path / "x.csv", [("a,b", np.zeros((2, 2), bool))])


def test_find_dicoms(tmp_path: Path) -> None:
    root = tmp_path / "dicom-images-train"
    a = root / "study1" / "series1" / "1.2.3.dcm"
    b = root / "study2" / "series2" / "1.2.4.dcm"
    for p in (a, b):
        p.parent.mkdir(parents=True)
        p.write_bytes(b"")
    (root / "study1" / "notes.txt").write_text("x")
    assert find_dicoms(root) == {"1.2.3": a, "1.2.4": b}
    dup = root / "study3" / "series3" / "1.2.3.dcm"
    dup.parent.mkdir(parents=True)
    dup.write_bytes(b"")
    with pytest.raises(SIIMFormatError, match=r"duplicate SOPInstanceUID 1\.2\.3"):
        find_dicoms(root)
    with pytest.raises(FileNotFoundError):
        find_dicoms(tmp_path / "missing")
