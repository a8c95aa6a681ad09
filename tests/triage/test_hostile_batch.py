"""A batch of unusual inputs through `triage predict` (issue 14): each input gets exactly one record, no
traceback, big-endian twins match, positives with invalid demographics keep valid SEG / SC, duplicates
never overwrite, and no planted patient marker reaches results.jsonl, the worklist or the log."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from tests.bundles import build_tiny_bundle
from tests.triage.hostile import MARKERS, radiograph, save, unusual_batch
from triage.io.dicom import read_image
from triage.outputs.records import input_digest

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
Run = tuple[Path, dict[str, str | None], dict[str, Any], str]  # out, expected codes, records by key, log


def _strict(text: str) -> dict[str, Any]:
    def refuse(value: str) -> None:
        raise ValueError(f"{value} is not JSON")

    return dict(json.loads(text, parse_constant=refuse))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    root = tmp_path_factory.mktemp("unusual")
    expect = unusual_batch(root / "in")
    # the gate passes every image and the segmenter marks the dark disc: every readable image is positive
    bundle = build_tiny_bundle(root / "bundle", classifier_bias=20.0)
    out = root / "out"
    home = root / "home"  # ONNX Runtime's telemetry would write here: nothing may (issue 14, item 9)
    home.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "triage.cli.main", "-vv", "predict", str(root / "in"), "--model",
         str(bundle), "--out", str(out), "--format", "png,seg,sc,sr"],
        capture_output=True, text=True, check=False, errors="backslashreplace", cwd=home,
        env={**os.environ, "HOME": str(home), "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert list(home.iterdir()) == []
    records = [_strict(line) for line in (out / "results.jsonl").read_text().splitlines()]
    by_key = {r["input_sha256"]: r for r in records} | {"_count": len(records)}
    return out, expect, by_key, proc.stdout + proc.stderr


def _record(run: Run, name: str) -> dict[str, Any]:
    _, expect, by_key, _ = run
    return dict(by_key[input_digest(next(p for p in expect if p.endswith(name)))])


def test_every_input_once_with_its_code_and_no_traceback(run: Run) -> None:
    _, expect, by_key, log = run
    assert "Traceback" not in log
    assert by_key["_count"] == len(expect)
    # keys as ascii(): a report holding the path that is not UTF-8 could not pass between xdist processes
    got = {ascii(path): by_key[input_digest(path)]["error_code"] for path in expect}
    assert got == {ascii(path): code for path, code in expect.items()}
    assert all(by_key[input_digest(p)]["status"] == "error" for p, code in expect.items() if code)


def test_big_endian_twin_gives_the_same_probability(run: Run) -> None:
    le, be = _record(run, "twin_le.dcm"), _record(run, "twin_be.dcm")
    assert le["probability"] is not None and le["probability"] == be["probability"]
    assert le["mask_area_px"] == be["mask_area_px"]


def test_positives_with_invalid_demographics_keep_valid_seg_and_sc(run: Run) -> None:
    out, expect, by_key, _ = run
    tool = shutil.which("dciodvfy")
    for path in expect:
        if "positive_" not in path and "twin_le" not in path:
            continue
        record = by_key[input_digest(path)]
        assert record["status"] == "ok" and record["positive"], record
        assert {"seg", "sc", "sr"} <= set(record["outputs"]), record
        assert "PatientBirthDate" in record["message"]  # named: left empty in the outputs
        if tool is None:
            continue
        for kind in ("seg", "sc"):
            proc = subprocess.run(
                [tool, str(out / record["outputs"][kind])], capture_output=True, text=True, check=False
            )
            errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]
            assert errors == [], (Path(path).name, kind, errors)


def test_duplicates_never_overwrite_and_derived_uids_are_unique(run: Run) -> None:
    out, expect, by_key, _ = run
    ok = [by_key[input_digest(p)] for p in expect if by_key[input_digest(p)]["status"] == "ok"]
    sc_uids = [str(pydicom.dcmread(out / r["outputs"]["sc"]).SOPInstanceUID) for r in ok]
    assert len(sc_uids) == len(set(sc_uids))
    dup = _record(run, "dup_b.dcm")
    assert dup["outputs"] == {} and dup["sop_uid"] == _record(run, "dup_a.dcm")["sop_uid"]


def test_no_marker_in_results_worklist_or_log(run: Run) -> None:
    out, expect, _, log = run
    texts = [log, (out / "results.jsonl").read_text(), (out / "worklist.csv").read_text()]
    for marker in MARKERS:
        assert all(marker.lower() not in t.lower() for t in texts), marker
    folder_case = _record(run, "case.dcm")
    assert folder_case["input"].endswith("/[redacted]_[redacted]/case.dcm")  # the folder named after them
    spacing = _record(run, "huge_spacing.dcm")
    assert spacing["mask_area_mm2"] is None and spacing["mask_area_px"] > 0
    assert os.fsencode(next(p for p in expect if "latin1" in p)).endswith(b"\xe9.dcm")


def test_padding_is_kept_out_of_the_display_range(tmp_path: Path) -> None:
    """A bright PixelPaddingValue border (issue 14, item 7): shown black, and the image's own brightest
    pixel is still white (without the attribute the border takes the top of the range)."""
    ds = radiograph(13)
    del ds.WindowCenter, ds.WindowWidth  # min-max display: the padding would stretch it
    stored = ds.pixel_array.copy()
    stored[:16], stored[-16:], stored[:, :16], stored[:, -16:] = 4095, 4095, 4095, 4095
    ds.PixelData = stored.astype(np.uint16).tobytes()
    plain = read_image(save(ds, tmp_path / "plain.dcm")).pixels
    ds.PixelPaddingValue = 4095
    padded = read_image(save(ds, tmp_path / "padded.dcm")).pixels
    inside = (slice(16, -16), slice(16, -16))
    assert padded[:16].max() == 0.0 and padded[inside].max() == pytest.approx(1.0)
    assert plain[:16].min() == pytest.approx(1.0) and plain[inside].max() < 0.95
