"""`expand_inputs` (files, folders, globs → a stable file list) and `group_by_study`."""

from __future__ import annotations

import os
from pathlib import Path

import pydicom
import pytest
from pydicom.data.data_manager import DATA_ROOT

from triage.errors import ErrorCode, TriageError
from triage.io.dicomfile import read_header
from triage.io.inputs import expand_inputs, group_by_study


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """root/{a.dcm, b/IM0001 (no extension), b/c/z.dcm, b/c/IM0002, .hidden.dcm, .cache/x.dcm, DICOMDIR}."""
    for name in ("a.dcm", "b/IM0001", "b/c/z.dcm", "b/c/IM0002", ".hidden.dcm", ".cache/x.dcm", "DICOMDIR"):
        path = tmp_path / "root" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    return tmp_path / "root"


def rel(paths: list[Path], root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in paths]


def test_folder_is_recursive_sorted_and_skips_hidden_and_dicomdir(tree: Path) -> None:
    files, errors = expand_inputs([str(tree)])
    assert rel(files, tree) == ["a.dcm", "b/IM0001", "b/c/IM0002", "b/c/z.dcm"]
    assert errors == []


def test_files_keep_args_order_and_explicit_names_are_kept(tree: Path) -> None:
    args = [str(tree / "b/c/z.dcm"), str(tree / "a.dcm"), str(tree / ".hidden.dcm")]
    files, errors = expand_inputs(args)
    assert rel(files, tree) == ["b/c/z.dcm", "a.dcm", ".hidden.dcm"] and errors == []


def test_globs(tree: Path) -> None:
    files, _ = expand_inputs([str(tree / "**" / "*.dcm")])
    assert rel(files, tree) == ["a.dcm", "b/c/z.dcm"]  # ** spans folders, skips hidden ones
    files, _ = expand_inputs([str(tree / "b" / "c" / "IM000?")])
    assert rel(files, tree) == ["b/c/IM0002"]
    files, _ = expand_inputs([str(tree / "[ab]*")])  # a matched folder is expanded
    assert rel(files, tree) == ["a.dcm", "b/IM0001", "b/c/IM0002", "b/c/z.dcm"]


def test_duplicates_are_dropped_keeping_first_position(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree)
    os.symlink(tree / "a.dcm", tree / "b" / "link.dcm")
    files, errors = expand_inputs(["b/c/z.dcm", str(tree), "./a.dcm", str(tree / "b" / "c" / "*.dcm")])
    assert [p.as_posix() for p in files] == [
        "b/c/z.dcm",
        f"{tree}/a.dcm",
        f"{tree}/b/IM0001",
        f"{tree}/b/c/IM0002",
    ]  # b/link.dcm is a.dcm
    assert errors == []


def test_args_naming_nothing_are_not_found(tree: Path) -> None:
    (tree / "empty").mkdir()
    (tree / "hidden_only").mkdir()
    (tree / "hidden_only" / ".x").write_bytes(b"x")
    args = [str(tree / "missing.dcm"), str(tree / "*.png"), str(tree / "empty"), str(tree / "hidden_only")]
    files, errors = expand_inputs([*args, str(tree / "a.dcm")])
    assert rel(files, tree) == ["a.dcm"]
    assert [arg for arg, _ in errors] == args
    assert all(err.code == ErrorCode.NOT_FOUND and arg in err.message for arg, err in errors)


def test_special_file_is_unreadable(tree: Path) -> None:
    os.mkfifo(tree / "pipe")
    files, errors = expand_inputs([str(tree / "pipe")])
    assert files == [] and [e.code for _, e in errors] == [ErrorCode.UNREADABLE]


def test_permission_error_is_unreadable_and_other_args_go_on(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_is_dir = Path.is_dir

    def is_dir(self: Path) -> bool:
        if self.name == "locked":
            raise PermissionError(13, "Permission denied")
        return real_is_dir(self)

    monkeypatch.setattr(Path, "is_dir", is_dir)
    files, errors = expand_inputs([str(tree / "locked"), str(tree / "a.dcm")])
    assert rel(files, tree) == ["a.dcm"]
    assert [(arg, e.code) for arg, e in errors] == [(str(tree / "locked"), ErrorCode.UNREADABLE)]
    assert "Permission denied" in errors[0][1].message


def test_group_by_study_keeps_order(tmp_path: Path) -> None:
    def header(study: str | None) -> pydicom.Dataset:
        ds = pydicom.Dataset()
        if study is not None:
            ds.StudyInstanceUID = study
        return ds

    headers = {
        Path("p1"): header("1.2.3"),
        Path("p2"): header("1.2.4"),
        Path("p3"): header("1.2.3"),
        Path("p4"): header(None),
    }
    groups = group_by_study(headers)
    assert list(groups.items()) == [
        ("1.2.3", [Path("p1"), Path("p3")]),
        ("1.2.4", [Path("p2")]),
        ("", [Path("p4")]),
    ]


def test_group_real_headers(tmp_path: Path) -> None:
    files = []
    for n, study in enumerate(["1.2.9.1", "1.2.9.2", "1.2.9.1"]):
        ds = pydicom.Dataset()
        ds.StudyInstanceUID, ds.SOPClassUID = study, pydicom.uid.ComputedRadiographyImageStorage
        ds.SOPInstanceUID = f"1.2.9.3.{n}"
        path = tmp_path / f"IM{n}"
        ds.save_as(path, implicit_vr=True, little_endian=True)  # no preamble, no file meta
        files.append(path)
    groups = group_by_study({p: read_header(p) for p in expand_inputs([str(tmp_path)])[0]})
    assert groups == {"1.2.9.1": [files[0], files[2]], "1.2.9.2": [files[1]]}


def test_read_header_skips_pixels_and_maps_errors(tmp_path: Path) -> None:
    ds = pydicom.Dataset()
    ds.SOPClassUID, ds.StudyInstanceUID = pydicom.uid.ComputedRadiographyImageStorage, "1.2.9.1"
    ds.BitsAllocated, ds.PixelData = 8, bytes(64)
    ds.save_as(tmp_path / "ok.dcm", implicit_vr=False, little_endian=True)
    assert "PixelData" not in read_header(tmp_path / "ok.dcm")
    with pytest.raises(TriageError) as info:
        read_header(Path(DATA_ROOT) / "test_files" / "rtplan_truncated.dcm")  # bundled with pydicom
    assert info.value.code == ErrorCode.TRUNCATED and "BeamSequence" in info.value.message
