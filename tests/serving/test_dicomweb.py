"""DICOMweb against a real server: Orthanc with its DICOMweb plugin (Debian orthanc-dicomweb) on loopback,
started and stopped by each test, with HTTP basic authentication (the credentials in a file).

- `triage watch --forward-stow`: results STOW-RS'd to Orthanc, Orthanc stopped in the middle, every
  result stored there exactly once after it is back; the credentials never appear in a log.
- `triage predict --dicomweb URL --study UID` / `--since DATE`: the same records as `triage predict` on
  the same files read locally.
- `triage poll URL`: new studies triaged once each across a kill -9 and a restart, the service's own
  SEG / SC / SR stored back to the same server never taken as inputs; the SEG found by QIDO-RS,
  retrieved by WADO-RS and referencing its source image (what a web viewer needs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.serving.conftest import Studies
from tests.serving.helpers import (
    FAST_RETRY,
    QUICK,
    ROOT,
    Orthanc,
    ServiceProcess,
    job_states,
    query,
    query_if_ready,
    require_dicomweb_extra,
    results,
)

pytestmark = pytest.mark.slow
require_dicomweb_extra()

USER, PASSWORD = "triage", "Zq7-secret-Wx"  # the password must never show in a log
COMPARED_OUT = {"input", "input_sha256", "timings_ms", "job", "version", "job_state"}


def _pacs(root: Path) -> Orthanc:
    return Orthanc(root, dicomweb=True, users={USER: PASSWORD}).start()


def _auth_file(root: Path) -> Path:
    path = root / "dicomweb.auth"
    path.write_text(f"Basic {USER}:{PASSWORD}\n")
    path.chmod(0o600)
    return path


def _sop(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _study(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def _outbox(db: Path) -> dict[tuple[str, str], int]:
    rows = query_if_ready(db, "SELECT dest, state, count(*) FROM outbox GROUP BY dest, state")
    return {(d, s): n for d, s, n in rows}


def _triage(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "triage.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "COLUMNS": "200", **(env or {})},
        timeout=300,
    )


def _by_sop(out: Path) -> dict[str, dict[str, Any]]:
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line]
    return {r["sop_uid"]: {k: v for k, v in r.items() if k not in COMPARED_OUT} for r in records}


def test_stow_forwarding_with_an_outage_in_the_middle_delivers_every_result_once(
    tmp_path: Path, studies: Studies, bundle: Path
) -> None:
    pacs = _pacs(tmp_path / "pacs")
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    db = out / "jobs.sqlite3"
    service = ServiceProcess(
        "watch",
        [
            inp,
            "--out",
            out,
            "--model",
            bundle,
            "--forward-stow",
            pacs.dicomweb_url,
            "--stow-auth-file",
            _auth_file(tmp_path),
            "--quiet-seconds",
            "0.3",
            *FAST_RETRY,
            *QUICK,
        ],
        tmp_path / "watch.log",
    ).start()
    try:
        first = studies.copy(inp, 2, start=0)
        service.wait_until(lambda: _outbox(db).get(("stow", "delivered"), 0) >= 4, 120, "delivery while up")
        pacs.stop()
        rest = studies.copy(inp, 4, start=2)
        service.wait_until(lambda: job_states(db).get("done", 0) == 6, 120, "processing during the outage")

        def retried() -> bool:
            rows = query(db, "SELECT count(*) FROM outbox WHERE state='pending' AND attempts >= 2")
            return rows[0][0] > 0

        service.wait_until(retried, 60, "retries while Orthanc is down")
        errors = query(db, "SELECT DISTINCT last_error FROM outbox WHERE state='pending'")
        assert any("cannot connect" in str(e[0]) for e in errors), errors
        shown = _triage("jobs", out)
        assert shown.returncode == 0, shown.stderr
        assert "outbox stow: pending" in shown.stdout and "cannot connect" in shown.stdout

        pacs.start()
        service.wait_until(
            lambda: {s for _, s in _outbox(db)} == {"delivered"}, 120, "the outbox to drain after the outage"
        )
        sent = {_study(f) for f in first + rest}
        wanted = {_sop(p) for s in sent for p in (out / "studies" / s).glob("*.dcm")}
        stored = Counter(pacs.store_events())
        assert set(stored) == wanted and set(stored.values()) == {1}, "every result delivered, once"
        assert set(pacs.sop_uids()) == wanted
        assert service.terminate() == 0
        logged = service.log.read_text() + shown.stdout + shown.stderr
        assert PASSWORD not in logged and "dHJpYWdl" not in logged  # nor its base64 (of "triage:")
    finally:
        service.stop()
        pacs.stop()


def test_qido_wado_input_gives_the_same_records_as_local_files(
    tmp_path: Path, studies: Studies, bundle: Path
) -> None:
    local = studies.copy(tmp_path / "local", 5, start=10)
    pacs = _pacs(tmp_path / "pacs")
    try:
        pacs.upload(local)
        common = ["--model", bundle, "--threads", "1", "--format", "png,seg,sc,sr"]
        by_file = _triage("predict", tmp_path / "local", "--out", tmp_path / "from-files", *common)
        assert by_file.returncode == 0, by_file.stderr

        uids = sorted({_study(p) for p in local})
        by_uid = _triage(  # credentials from an environment variable this time
            "predict",
            "--dicomweb",
            pacs.dicomweb_url,
            *[a for u in uids[:3] for a in ("--study", u)],
            "--dicomweb-auth-env",
            "PACS_AUTH",
            "--out",
            tmp_path / "from-uids",
            *common,
            env={"PACS_AUTH": f"Basic {USER}:{PASSWORD}"},
        )
        assert by_uid.returncode == 0, by_uid.stderr
        by_query = _triage(
            "predict",
            "--dicomweb",
            pacs.dicomweb_url,
            "--since",
            "1900-01-01",
            "--modality",
            "CR,DX",
            "--dicomweb-auth-file",
            _auth_file(tmp_path),
            "--dicomweb-cache",
            tmp_path / "cache",
            "--out",
            tmp_path / "from-query",
            *common,
        )
        assert by_query.returncode == 0, by_query.stderr
    finally:
        pacs.stop()

    expected = _by_sop(tmp_path / "from-files")
    assert len(expected) == 5
    chosen = {_sop(p) for p in local if _study(p) in uids[:3]}
    assert _by_sop(tmp_path / "from-uids") == {k: v for k, v in expected.items() if k in chosen}
    assert _by_sop(tmp_path / "from-query") == expected
    assert len(list((tmp_path / "cache").rglob("*.dcm"))) == 5  # --dicomweb-cache keeps what it retrieved
    for proc in (by_uid, by_query):
        assert PASSWORD not in proc.stdout + proc.stderr


def test_predict_dicomweb_errors_are_one_line(tmp_path: Path, bundle: Path) -> None:
    pacs = _pacs(tmp_path / "pacs")
    try:
        args = ["predict", "--dicomweb", pacs.dicomweb_url, "--model", bundle, "--out", tmp_path / "o"]
        wrong = tmp_path / "wrong.auth"
        wrong.write_text(f"Basic {USER}:not-{PASSWORD}\n")
        denied = _triage(*args, "--since", "1900-01-01", "--dicomweb-auth-file", wrong)
        assert denied.returncode == 2 and "HTTP 401" in denied.stderr, denied.stderr
        assert "not-" not in denied.stderr
        inline = _triage(
            "predict",
            "--dicomweb",
            f"http://{USER}:{PASSWORD}@127.0.0.1:{pacs.http_port}/dicom-web",
            "--study",
            "1.2.3",
            "--model",
            bundle,
            "--out",
            tmp_path / "o",
        )
        assert inline.returncode == 2 and "without credentials" in inline.stderr
        missing = _triage(*args, "--study", "1.2.3.4", "--dicomweb-auth-file", _auth_file(tmp_path))
        assert missing.returncode == 2 and "1.2.3.4" in missing.stderr, missing.stderr
    finally:
        pacs.stop()


def _poll(root: Path, pacs: Orthanc, bundle: Path, *extra: object) -> ServiceProcess:
    return ServiceProcess(
        "poll",
        [
            pacs.dicomweb_url,
            "--out",
            root / "out",
            "--model",
            bundle,
            "--auth-file",
            _auth_file(root),
            "--since",
            "1900-01-01",
            "--poll-interval",
            "1",
            "--quiet-seconds",
            "0.3",
            "--forward-stow",
            pacs.dicomweb_url,
            "--stow-auth-file",
            _auth_file(root),
            *FAST_RETRY,
            *QUICK,
            *extra,
        ],
        root / "poll.log",
    ).start()


def test_polling_triages_each_study_once_across_a_restart(
    tmp_path: Path, studies: Studies, bundle: Path
) -> None:
    pacs = _pacs(tmp_path / "pacs")
    out = tmp_path / "out"
    db = out / "jobs.sqlite3"
    try:
        first = studies.files[20:26]
        pacs.upload(first)
        service = _poll(tmp_path, pacs, bundle)
        service.wait_until(lambda: job_states(db).get("done", 0) >= 2, 180, "the first studies")
        service.kill9()
        later = studies.files[26:29]
        pacs.upload(later)
        again = _poll(tmp_path, pacs, bundle, "--once")
        assert again.wait(300) == 0, again.tail()
        # a third run finds nothing new: the results it stored back are not inputs
        third = _poll(tmp_path, pacs, bundle, "--once")
        assert third.wait(300) == 0, third.tail()
    finally:
        pacs.stop()

    inputs = {_sop(p) for p in first + later}
    records = results(out)
    assert Counter(r["sop_uid"] for r in records) == Counter(dict.fromkeys(inputs, 1))
    assert {r["status"] for r in records} == {"ok"}
    assert job_states(db) == {"done": len(inputs)}
    retrieved = query(db, "SELECT sop_uid, count(*) FROM images GROUP BY sop_uid")
    assert {s for s, _ in retrieved} == inputs and {n for _, n in retrieved} == {1}
    assert not list((out / "spool").rglob("*.dcm"))  # --inputs delete: the spool is emptied
    assert {s for _, s in _outbox(db)} == {"delivered"}


def test_a_web_viewer_finds_the_seg_and_its_source_image_over_dicomweb(
    tmp_path: Path, studies: Studies, bundle: Path
) -> None:
    """What OHIF (or any DICOMweb viewer) does with a study: QIDO-RS finds the SEG, WADO-RS returns
    it, and the SEG references the source image, which is on the same server."""
    from triage.io.dicomweb import AuthSource, connect, search_instances

    pacs = _pacs(tmp_path / "pacs")
    try:
        inputs = studies.files[30:40]
        pacs.upload(inputs)
        service = _poll(tmp_path, pacs, bundle, "--once")
        assert service.wait(300) == 0, service.tail()
        positive = [r for r in results(tmp_path / "out") if r["positive"]]
        assert positive, "the tiny bundle calls some of these positive"
        client = connect(pacs.dicomweb_url, AuthSource(_auth_file(tmp_path)))
        record = positive[0]
        segs = client.search_for_series(
            search_filters={"StudyInstanceUID": record["study_uid"], "Modality": "SEG"}
        )
        assert len(segs) == 1
        [ref] = [
            r
            for r in search_instances(client, record["study_uid"])
            if r.series_uid == segs[0]["0020000E"]["Value"][0]
        ]
        seg = client.retrieve_instance(ref.study_uid, ref.series_uid, ref.sop_uid)
        assert seg.Modality == "SEG" and seg.StudyInstanceUID == record["study_uid"]
        source = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
        assert source == record["sop_uid"]
        image = client.search_for_instances(
            study_instance_uid=record["study_uid"], search_filters={"SOPInstanceUID": source}
        )
        assert len(image) == 1  # the viewer can load the image under the segmentation
    finally:
        pacs.stop()
