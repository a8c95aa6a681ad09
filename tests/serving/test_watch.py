"""`triage watch` end to end, as a real process: one module-scoped run that a hospital would recognise.

Wave 1 — moved into the watched folder as a whole tree (atomic rename): 12 studies whose patient name,
ID and birth date are distinctive strings, one of them with a second image, plus a non-DICOM file, a
truncated DICOM file and a CT image (unsupported modality). Wave 2 — copied in place: a new image for a
study already done (→ version 2) and a byte-identical re-send of a done image (→ nothing new).
The service runs with --inputs move, an on-positive command and a webhook that fails its first call.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.serving.conftest import Studies
from tests.serving.helpers import (
    PHI,
    ServiceProcess,
    dciodvfy_errors,
    extra_image,
    free_port,
    http_get,
    job_states,
    metric,
    query,
    results,
    set_identity,
)


class Hook:
    """A webhook receiver on loopback that answers 503 to its first POST and 200 to the rest."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, bytes]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = 503 if not hook.calls else 200
                hook.calls.append((status, body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/triage"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@dataclass
class Run:
    root: Path
    inp: Path
    out: Path
    proc: ServiceProcess
    log_file: Path
    actions: Path
    good: list[Path]
    second: Path
    third: Path
    resent: Path
    bad: dict[str, str]
    hook: Hook
    metrics: str
    health: tuple[int, str]
    rc: int


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, studies: Studies, bundle: Path) -> Run:
    root = tmp_path_factory.mktemp("watch")
    inp, out, stage, actions = root / "in", root / "out", root / "stage", root / "actions"
    for folder in (inp, actions):
        folder.mkdir()
    good = studies.copy(stage / "batch", 12)
    for path in good:
        set_identity(path, **PHI)
    second = extra_image(good[0], good[0].parent / "second.dcm", 2)
    bad_dir = stage / "batch" / "misc"
    bad_dir.mkdir()
    (bad_dir / "notes.txt").write_text("exported by the router at 08:30\n")
    data = extra_image(good[1], root / "whole.dcm", 7, new_study=True).read_bytes()
    (bad_dir / "corrupt.dcm").write_bytes(data[: len(data) // 2])
    extra_image(
        good[2], bad_dir / "ct.dcm", 8, new_study=True, Modality="CT", SOPClassUID=pydicom.uid.CTImageStorage
    )
    bad = {"notes.txt": "not_dicom", "corrupt.dcm": "truncated", "ct.dcm": "unsupported_modality"}
    shutil.copytree(stage / "batch", root / "sent")  # what was sent, for the assertions
    good = [root / "sent" / p.relative_to(stage / "batch") for p in good]
    second = root / "sent" / second.relative_to(stage / "batch")

    hook = Hook()
    port = free_port()
    log_file = root / "logs" / "watch.jsonl"
    proc = ServiceProcess(
        "watch",
        [
            inp,
            "--out",
            out,
            "--model",
            bundle,
            "--quiet-seconds",
            "0.5",
            "--inputs",
            "move",
            "--http-port",
            port,
            "--min-free-mb",
            "1",
            "--retry-base",
            "0.2",
            "--retry-max",
            "1",
            "--on-positive",
            f"cat > {actions}/$TRIAGE_ACTION_ID.json",
            "--webhook",
            hook.url,
            "--log-file",
            log_file,
            "--threads",
            "1",
        ],
        root / "service.log",
    ).start()
    db = out / "jobs.sqlite3"
    try:
        proc.wait_until(lambda: (out / ".service.lock").exists() and db.exists(), 60, "the service to start")
        os.rename(stage / "batch", inp / "batch")  # a whole tree arrives atomically
        proc.wait_until(lambda: job_states(db) == {"done": 12, "quarantined": 2}, 120, "wave 1 to finish")
        # wave 2, copied in place (open, write, close): a new image for a done study, a re-sent image
        wave2 = inp / "wave2"
        wave2.mkdir()
        third = extra_image(good[3], root / "third.dcm", 3)
        shutil.copy(third, wave2 / "third.dcm")
        resent = set_identity(studies.files[4], root / "resent.dcm", **PHI)
        shutil.copy(resent, wave2 / "resent.dcm")
        proc.wait_until(
            lambda: (
                job_states(db) == {"done": 13, "quarantined": 2}
                and not (wave2.exists() and any(wave2.iterdir()))
            ),
            120,
            "wave 2 to finish",
        )

        def actions_settled() -> bool:
            rows = query(db, "SELECT count(*) FROM actions WHERE state != 'done'")
            return rows[0][0] == 0

        proc.wait_until(actions_settled, 60, "on-positive actions")
        health = http_get(f"http://127.0.0.1:{port}/healthz")
        metrics = http_get(f"http://127.0.0.1:{port}/metrics")[1]
        rc = proc.terminate()
    finally:
        proc.stop()
        hook.server.shutdown()
    return Run(
        root, inp, out, proc, log_file, actions, good, second, third, resent, bad, hook, metrics, health, rc
    )


def _by_input_name(run: Run) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for record in results(run.out):
        found.setdefault(Path(str(record["input"])).name, []).append(record)
    return found


def test_every_study_has_exactly_one_result_and_versions_replace(run: Run) -> None:
    records = results(run.out)
    done = [r for r in records if r["job_state"] == "done"]
    versions = Counter((r["study_uid"], r["version"]) for r in done)
    # 12 studies; the one with two images counts 2 lines; the study that gained an image has versions 1 and 2
    study3 = str(pydicom.dcmread(run.good[3]).StudyInstanceUID)
    assert len({s for s, _ in versions}) == 12
    assert versions[(study3, 1)] == 1 and versions[(study3, 2)] == 2
    study0 = str(pydicom.dcmread(run.good[0]).StudyInstanceUID)
    assert versions[(study0, 1)] == 2, "the second image, dropped with the first, is in the same version"
    per_sop = Counter((r["sop_uid"], r["version"]) for r in done)
    assert set(per_sop.values()) == {1}
    assert all(r["status"] == "ok" for r in done)
    # the re-sent image made no new version and was moved away like the original
    assert not (run.inp / "wave2").exists() or not any((run.inp / "wave2").iterdir())
    resent_study = str(pydicom.dcmread(run.resent).StudyInstanceUID)
    assert {v for s, v in versions if s == resent_study} == {1}


def test_outputs_are_replaced_not_duplicated_and_pass_dciodvfy(run: Run) -> None:
    objects = sorted((run.out / "studies").rglob("*.dcm"))
    names = Counter(p.name for p in objects)
    assert set(names.values()) == {1}
    sc = [p for p in objects if p.name.endswith("_sc.dcm")]
    assert len(sc) == 14  # 12 studies, +1 second image, +1 image of version 2
    uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in objects]
    assert len(uids) == len(set(uids))
    assert not [p for p in (run.out / "studies").rglob("*") if p.name.startswith(".")]
    assert dciodvfy_errors(objects) == []


def test_unusable_files_are_quarantined_with_their_error_record(run: Run) -> None:
    notes = sorted((run.out / "quarantine").rglob("*.error.json"))
    found = {}
    for note in notes:
        record = json.loads(note.read_text())
        name = Path(record["file"]).name
        found[name] = record["error_code"]
        moved = note.with_name(note.name.removesuffix(".error.json"))
        assert moved.is_file() and moved.name.endswith(name)
        assert record["message"] and record["quarantined_at"]
    assert found == run.bad
    by_name = _by_input_name(run)
    for name, code in run.bad.items():
        assert [r["error_code"] for r in by_name[name]] == [code]


def test_inputs_are_moved_to_processed_and_the_watched_folder_is_left_empty(run: Run) -> None:
    assert [p for p in run.inp.rglob("*")] == []
    processed = sorted((run.out / "processed").rglob("*.dcm"))
    assert len(processed) == 14
    for path in processed:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert path.name == f"{ds.SOPInstanceUID}.dcm" and path.parent.name == ds.StudyInstanceUID


def test_worklist_one_row_per_study_positives_first(run: Run) -> None:
    rows = list(csv.DictReader((run.out / "worklist.csv").open()))
    assert len(rows) == 12 and len({r["study_uid"] for r in rows}) == 12
    flags = [r["positive"] == "true" for r in rows]
    assert flags == sorted(flags, reverse=True) and any(flags)


def test_on_positive_command_and_webhook_run_once_per_positive_study(run: Run) -> None:
    positive = {
        s
        for (s,) in query(
            run.out / "jobs.sqlite3", "SELECT DISTINCT study_uid FROM jobs WHERE state='done' AND positive=1"
        )
    }
    assert positive
    dumps = [json.loads(p.read_text()) for p in run.actions.glob("*.json")]
    assert sorted(d["study_uid"] for d in dumps) == sorted(positive)
    assert all(d["positive"] and d["records"] for d in dumps)
    acknowledged = [json.loads(body)["study_uid"] for status, body in run.hook.calls if status == 200]
    assert sorted(acknowledged) == sorted(positive)
    assert run.hook.calls[0][0] == 503, "the failed first POST was retried"


def test_metrics_and_healthz(run: Run) -> None:
    status, body = run.health
    assert status == 200 and json.loads(body)["status"] == "ok"
    text = run.metrics
    assert metric(text, "triage_studies", 'state="done"') == 13
    assert metric(text, "triage_studies", 'state="quarantined"') == 2
    assert metric(text, "triage_queue_depth") == 0
    for code in run.bad.values():
        assert metric(text, "triage_failures_total", f'code="{code}"') >= 1
    assert metric(text, "triage_processing_seconds_count") == 15
    assert metric(text, "triage_arrival_to_result_seconds_count") == 15
    assert metric(text, "triage_received_files_total", 'source="watch"') == 18
    assert metric(text, "process_resident_memory_bytes") > 0


def test_logs_are_json_lines_and_sigterm_exits_0(run: Run) -> None:
    assert run.rc == 0
    entries = run.proc.log_entries()
    events = Counter(e.get("event") for e in entries)
    assert events["study_done"] == 13 and events["quarantined"] == 3 and events["stopped"] == 1
    file_entries = [json.loads(line) for line in run.log_file.read_text().splitlines()]
    assert len(file_entries) == len(entries)


def test_no_patient_name_id_or_birth_date_outside_the_dicom_objects(run: Run) -> None:
    needles = [v.encode() for v in PHI.values()] + [PHI["PatientName"].split("^")[0].encode()]
    assert needles[0] in run.good[5].read_bytes(), "the inputs do carry the distinctive values"
    scanned = 0
    for path in [*run.root.rglob("*")]:
        if not path.is_file() or path.suffix == ".dcm" or "stage" in path.parts:
            continue
        data = path.read_bytes()
        scanned += 1
        hits = [n.decode() for n in needles if n in data]
        assert not hits, f"{path.relative_to(run.root)} contains {hits}"
    assert scanned > 30  # logs, results, worklist, job store, PNGs, error records, action dumps
    for _, body in run.hook.calls:
        assert not any(n in body for n in needles)
