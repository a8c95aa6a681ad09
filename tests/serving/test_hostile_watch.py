"""Unusual inputs in a watched folder (issue 14): a file name that is not UTF-8, a memory bomb beside an
innocent image of its study, a positive with invalid demographics, one instance twice, a degenerate
image, a non-DICOM file. `triage watch --once` processes them all without a traceback; every file is in
the job store exactly once; the innocent image's study is done; no planted patient marker reaches
results.jsonl, the job store or the log."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from serving.database import fs_path
from tests.bundles import build_tiny_bundle
from tests.serving.helpers import dciodvfy_errors, query, results
from tests.triage.hostile import MARKERS, radiograph, rle_bomb, save

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _name(path: str | Path) -> str:
    """A file's name as ascii() writes it: a report holding the name that is not UTF-8 could not be sent
    between pytest-xdist processes."""
    return ascii(Path(path).name)


def _corpus(folder: Path) -> dict[str, str | None]:
    """{file name (:func:`_name`): expected error code or None}."""
    folder.mkdir()
    latin1 = Path(os.fsdecode(bytes(folder) + b"/latin1_\xe9.dcm"))
    save(radiograph(1), latin1)
    save(radiograph(2), folder / "innocent.dcm")
    bomb = rle_bomb(folder / "bomb.dcm")
    ds = pydicom.dcmread(bomb)
    ds.StudyInstanceUID = radiograph(2).StudyInstanceUID  # the bomb shares the innocent image's study
    ds.save_as(bomb)
    sex = radiograph(3)
    sex.PatientSex = "X"
    save(sex, folder / "positive_sex.dcm")
    save(radiograph(4), folder / "dup_a.dcm")
    save(radiograph(4), folder / "dup_b.dcm")
    save(radiograph(5, display=np.full((256, 256), 0.4, np.float32)), folder / "constant.dcm")
    (folder / "notes.txt").write_text("not an image")
    expect = {latin1: None, "innocent.dcm": None, "bomb.dcm": "too_large", "positive_sex.dcm": None,
              "dup_b.dcm": None, "constant.dcm": "degenerate_image", "notes.txt": "not_dicom"}
    return {_name(name): code for name, code in expect.items()}


def test_unusual_files_in_a_watched_folder(tmp_path: Path) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    expect = _corpus(inp)
    names = sorted(_name(n) for n in os.listdir(inp))
    bundle = build_tiny_bundle(tmp_path / "bundle", classifier_bias=20.0)
    proc = subprocess.run(
        [sys.executable, "-m", "triage.cli.main", "watch", str(inp), "--out", str(out), "--model",
         str(bundle), "--once", "--quiet-seconds", "0.2", "--format", "png,seg,sc,sr"],
        capture_output=True, text=True, check=False, timeout=300, errors="backslashreplace",
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Traceback" not in log, log[-3000:]
    db = out / "jobs.sqlite3"
    stored = sorted(_name(fs_path(str(origin))) for (origin,) in query(db, "SELECT origin FROM files"))
    assert stored == names  # each file once (dup_a: replaced by dup_b, the same instance)
    states = dict(query(db, "SELECT state, count(*) FROM jobs WHERE study_uid IS NOT NULL GROUP BY state"))
    assert "failed" not in states and states.get("done", 0) >= 3, states
    records = results(out)
    codes = {_name(str(r["input"])): r["error_code"] for r in records}
    assert {name: codes.get(name) for name in expect} == expect
    assert len(records) == len(expect)
    [sex] = [r for r in records if str(r["input"]).endswith("positive_sex.dcm")]
    assert sex["positive"] and "PatientBirthDate" in sex["message"] and "PatientSex" in sex["message"]
    assert dciodvfy_errors([out / sex["outputs"]["seg"], out / sex["outputs"]["sc"]]) == []
    stores = [p.read_bytes() for p in out.glob("jobs.sqlite3*")]
    texts = [log.encode(), (out / "results.jsonl").read_bytes(), *stores]
    for marker in MARKERS:
        assert all(marker.encode() not in t for t in texts), marker
