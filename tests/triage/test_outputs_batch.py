"""results.jsonl (durable, resumable) and worklist.csv (one row per study, most urgent first)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from triage.errors import ErrorCode, TriageError
from triage.outputs.batch import (
    WORKLIST_COLUMNS,
    ResultsWriter,
    finished_inputs,
    read_results,
    write_worklist,
)
from triage.outputs.records import ResultRecord

S1, S2, S3, S4 = (f"1.2.826.0.1.3680043.8.498.55.{n}" for n in range(1, 5))


def ok(name: str, study: str | None, p: float, positive: bool, area: float | None = None) -> ResultRecord:
    return ResultRecord(
        input=name,
        status="ok",
        study_uid=study,
        probability=p,
        positive=positive,
        mask_area_mm2=area,
        priority=p,
    )


def err(name: str, study: str | None = None) -> ResultRecord:
    return ResultRecord(
        input=name, status="error", error_code="decode_failed", message="bad", study_uid=study
    )


def test_results_writer_appends_lines_and_resume_tolerates_a_torn_line(tmp_path: Path) -> None:
    with ResultsWriter(tmp_path) as writer:
        writer.write(ok("a.dcm", S1, 0.9, True))
        writer.write(err("b.dcm"))
    path = tmp_path / "results.jsonl"
    lines = path.read_text().splitlines()
    assert [json.loads(line)["input"] for line in lines] == ["a.dcm", "b.dcm"]
    with open(path, "a") as fh:  # killed half-way through writing c.dcm
        fh.write('{"input":"c.dcm","status":"o')
    assert finished_inputs(tmp_path) == {"a.dcm", "b.dcm"}
    with ResultsWriter(tmp_path) as writer:  # --resume: the torn tail is cut before appending
        writer.write(ok("c.dcm", S2, 0.1, False))
    assert finished_inputs(tmp_path) == {"a.dcm", "b.dcm", "c.dcm"}
    assert all(json.loads(line) for line in path.read_text().splitlines())
    assert [r.input for r in read_results(tmp_path)] == ["a.dcm", "b.dcm", "c.dcm"]


def test_complete_last_line_without_newline_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text(ok("a.dcm", S1, 0.5, False).to_json())  # no trailing newline
    with ResultsWriter(tmp_path) as writer:
        writer.write(ok("b.dcm", S1, 0.5, False))
    assert finished_inputs(tmp_path) == {"a.dcm", "b.dcm"}


def test_truncate_starts_afresh_and_missing_file_means_nothing_finished(tmp_path: Path) -> None:
    assert finished_inputs(tmp_path) == set() and read_results(tmp_path) == []
    with ResultsWriter(tmp_path) as writer:
        writer.write(ok("a.dcm", S1, 0.5, False))
    with ResultsWriter(tmp_path, truncate=True) as writer:
        writer.write(ok("b.dcm", S1, 0.5, False))
    assert finished_inputs(tmp_path) == {"b.dcm"}


def test_results_writer_reports_write_failures(tmp_path: Path) -> None:
    (tmp_path / "results.jsonl").mkdir()
    with pytest.raises(TriageError) as info, ResultsWriter(tmp_path):
        pass
    assert info.value.code == ErrorCode.WRITE_FAILED and "results.jsonl" in info.value.message


def test_worklist_one_row_per_study_most_urgent_first(tmp_path: Path) -> None:
    records = [
        ok("s1-a", S1, 0.40, False),
        ok("s2-a", S2, 0.70, True, 120.0),
        ok("s2-b", S2, 0.95, True, 300.5),
        ok("s3-a", S3, 0.60, False),
        err("s3-b", S3),
        ok("s4-a", S4, 0.80, True, 50.0),
        err("no-study"),  # unreadable: not in the worklist
        err("s5-only-error", "1.2.826.0.1.3680043.8.498.55.5"),
    ]
    path = write_worklist(tmp_path, records)
    assert path == tmp_path / "worklist.csv"
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == WORKLIST_COLUMNS
    assert [r["study_uid"] for r in rows] == [S2, S4, S3, S1, "1.2.826.0.1.3680043.8.498.55.5"]
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4", "5"]
    first = rows[0]
    assert first["positive"] == "true" and first["max_probability"] == "0.9500"
    assert (first["images"], first["positive_images"], first["max_mask_area_mm2"]) == ("2", "2", "300.5")
    assert first["outputs"] == f"studies/{S2}" and first["errors"] == "0"
    assert (rows[2]["images"], rows[2]["errors"], rows[2]["positive"]) == ("1", "1", "false")
    assert rows[4]["max_probability"] == "" and rows[4]["images"] == "0"


def test_worklist_keeps_a_bad_study_uid_row_without_a_folder(tmp_path: Path) -> None:
    path = write_worklist(tmp_path, [ok("x", "=../../x", 0.9, True)])
    (row,) = list(csv.DictReader(path.read_text().splitlines()))
    assert row["study_uid"] == "'=../../x" and row["outputs"] == ""
