"""`triage watch` and `triage predict` run the same cascade engine (Predictor.stream): a folder triaged
by each gives the same records (apart from timings and the service's job fields) and byte-identical
output files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.serving.conftest import Studies
from tests.serving.helpers import ROOT, ServiceProcess, extra_image, results

SERVICE_ONLY = {"timings_ms", "job", "version", "job_state"}  # what only the service's records carry
FORMATS = "png,seg,sc,sr"


def _comparable(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in SERVICE_ONLY}


def test_watch_and_predict_give_the_same_records_and_files(
    tmp_path: Path, studies: Studies, bundle: Path
) -> None:
    folder = tmp_path / "in"
    good = studies.copy(folder, 10)
    (folder / "misc").mkdir()
    (folder / "misc" / "notes.txt").write_text("exported by the router at 08:30\n")
    data = extra_image(good[0], tmp_path / "whole.dcm", 7, new_study=True).read_bytes()
    (folder / "misc" / "corrupt.dcm").write_bytes(data[: len(data) // 2])
    common = ["--model", str(bundle), "--format", FORMATS, "--threads", "1", "--batch-size", "4"]

    predict_out = tmp_path / "predict"
    proc = subprocess.run(
        [sys.executable, "-m", "triage.cli.main", "predict", str(folder), "--out", str(predict_out), *common],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 1, proc.stderr  # the two bad files fail
    by_predict = {
        r["input"]: r for r in map(json.loads, (predict_out / "results.jsonl").read_text().splitlines())
    }

    watch_out = tmp_path / "watch"
    service = ServiceProcess(
        "watch",
        [
            folder,
            "--out",
            watch_out,
            *common,
            "--quiet-seconds",
            "0",
            "--inputs",
            "keep",
            "--once",
            "--http-port",
            "0",
            "--min-free-mb",
            "1",
        ],
        tmp_path / "watch.log",
    ).start()
    assert service.wait(180) == 0, service.tail()
    by_watch = {r["input"]: r for r in results(watch_out)}
    unusable = {str(folder / "misc" / n) for n in ("notes.txt", "corrupt.dcm")}

    assert set(by_predict) == {str(p) for p in good} | unusable
    assert set(by_watch) == set(by_predict)
    for path in sorted(by_predict):
        if path in unusable:  # the watcher refuses a file whose header it cannot read before the engine
            assert (by_watch[path]["status"], by_watch[path]["error_code"]) == (
                "error",
                by_predict[path]["error_code"],
            )
        else:
            assert _comparable(by_watch[path]) == _comparable(by_predict[path]), path
    assert {by_predict[p]["error_code"] for p in unusable} == {"not_dicom", "truncated"}
    assert any(r.get("positive") for r in by_predict.values())
    rels = [rel for r in by_predict.values() for rel in (r.get("outputs") or {}).values()]
    assert rels, "the comparison covers output files"
    for rel in rels:
        assert (watch_out / rel).read_bytes() == (predict_out / rel).read_bytes(), rel
