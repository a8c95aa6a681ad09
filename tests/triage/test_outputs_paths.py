"""Output paths from validated UIDs only, and atomic writes that fail cleanly."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from triage.errors import ErrorCode, TriageError
from triage.outputs import atomic
from triage.outputs.atomic import atomic_save_dataset, atomic_save_png, atomic_write_bytes
from triage.outputs.paths import study_dir, validated_uid

GOOD = "1.2.826.0.1.3680043.8.498.12345"


@pytest.mark.parametrize(
    "uid",
    [
        "../../x",
        "1.2/3",
        "1.2.3/../../etc",
        "..",
        ".",
        "",
        "1.2.abc",
        "1..2",
        "1.02",
        "1.2.",
        " 1.2",
        "1" * 65,
    ],
)
def test_bad_uids_are_rejected_with_their_name_and_value(uid: str) -> None:
    with pytest.raises(TriageError) as info:
        validated_uid(uid, "StudyInstanceUID")
    assert info.value.code == ErrorCode.INVALID_UID
    assert "StudyInstanceUID" in info.value.message and repr(uid[:20])[:-1] in info.value.message


def test_good_uid_passes_unchanged() -> None:
    assert validated_uid(GOOD, "SOPInstanceUID") == GOOD
    assert validated_uid("1." + "2" * 62, "x") == "1." + "2" * 62  # 64 characters


def test_study_dir_stays_under_out(tmp_path: Path) -> None:
    folder = study_dir(tmp_path, GOOD)
    assert folder == tmp_path / "studies" / GOOD
    assert folder.resolve().is_relative_to(tmp_path.resolve())
    for bad in ("../../x", "/etc", "1.2/../../x"):
        with pytest.raises(TriageError) as info:
            study_dir(tmp_path, bad)
        assert info.value.code == ErrorCode.INVALID_UID


def test_study_dir_refuses_a_symlink_that_escapes(tmp_path: Path) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    (out / "studies").mkdir(parents=True)
    elsewhere.mkdir()
    (out / "studies" / GOOD).symlink_to(elsewhere)
    with pytest.raises(TriageError) as info:
        study_dir(out, GOOD)
    assert info.value.code == ErrorCode.INTERNAL and "escapes" in info.value.message


def test_atomic_writes_replace_and_leave_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "file.bin"
    atomic_write_bytes(path, b"one")
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two"
    image = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    atomic_save_png(tmp_path / "x.png", image)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "x.png")), image)
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID, ds.PatientID = pydicom.uid.SecondaryCaptureImageStorage, GOOD, "X"
    atomic_save_dataset(tmp_path / "x.dcm", ds)
    assert pydicom.dcmread(tmp_path / "x.dcm").PatientID == "X"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["file.bin", "sub", "x.dcm", "x.png"]


def test_disk_full_is_a_clear_error_and_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "fsync", no_space)
    path = tmp_path / "full.bin"
    with pytest.raises(TriageError) as info:
        atomic_write_bytes(path, b"data")
    assert info.value.code == ErrorCode.WRITE_FAILED
    assert str(path) in info.value.message and "No space left on device" in info.value.message
    assert list(tmp_path.iterdir()) == []


def test_unwritable_target_is_write_failed(tmp_path: Path) -> None:
    (tmp_path / "dir.png").mkdir()  # a folder where the file should go
    with pytest.raises(TriageError) as info:
        atomic_save_png(tmp_path / "dir.png", np.zeros((2, 2), np.uint8))
    assert info.value.code == ErrorCode.WRITE_FAILED and "dir.png" in info.value.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.png"]


def test_png_rejects_bad_arrays(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="float64"):
        atomic_save_png(tmp_path / "x.png", np.zeros((2, 2)))
