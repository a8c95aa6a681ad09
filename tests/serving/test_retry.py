"""Transient failures are retried with back-off, permanent ones are not; low disk pauses processing.

The service runs in-process (a thread) so that failures can be injected: writing the Secondary
Capture raises ENOSPC ("No space left on device") for as long as the test says.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydicom
import pytest

import triage.cascade.write as write_module
from serving.config import ServiceConfig, WatchConfig
from serving.service import Service
from serving.watch import FolderSource
from tests.serving.conftest import Studies
from tests.serving.helpers import (
    ROOT,
    extra_image,
    free_port,
    http_get,
    job_states,
    query,
    results,
    wait_until,
)


class DiskFull:
    """Makes write_sc raise ENOSPC while ``failing`` is set."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.failing = True
        self.calls = 0
        real = write_module.write_sc

        def write_sc(*args: Any, **kwargs: Any) -> None:
            self.calls += 1
            if self.failing:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real(*args, **kwargs)

        monkeypatch.setattr(write_module, "write_sc", write_sc)


@contextmanager
def service(inp: Path, out: Path, bundle: Path, **settings: Any) -> Iterator[Service]:
    config = ServiceConfig(
        out=out,
        bundle=bundle,
        quiet_seconds=0.2,
        threads=1,
        min_free_mb=1,
        retry_base=0.1,
        retry_max=0.5,
        **settings,
    )
    watch = WatchConfig(inp, rescan_seconds=0)
    svc = Service(config, lambda store, metrics: FolderSource(watch, store, metrics, 0.2), (inp,))
    status: list[int] = []
    thread = threading.Thread(target=lambda: status.append(svc.run()), daemon=True)
    thread.start()
    try:
        wait_until(lambda: (out / "worklist.csv").exists(), 60, "the service to start")  # after recovery
        yield svc
    finally:
        svc.request_stop()
        thread.join(60)
    assert status == [0]


def test_disk_full_is_retried_with_back_off_until_it_succeeds(
    tmp_path: Path, studies: Studies, bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    disk = DiskFull(monkeypatch)
    with service(inp, out, bundle, max_attempts=10, http_port=0):
        studies.copy(inp, 1)
        db = out / "jobs.sqlite3"
        wait_until(
            lambda: (query(db, "SELECT max(attempts) FROM jobs")[0][0] or 0) >= 3, 60, "three attempts"
        )
        assert job_states(db) in ({"queued": 1}, {"running": 1})
        assert not results(out), "nothing is reported while a retry is pending"
        disk.failing = False
        wait_until(lambda: job_states(db) == {"done": 1}, 60, "success after the disk is back")
    [(attempts, code)] = query(db, "SELECT attempts, error_code FROM jobs")
    assert attempts >= 3 and code is None
    [record] = results(out)
    assert record["status"] == "ok" and record["outputs"]["sc"]


def test_a_transient_failure_past_the_last_attempt_fails_the_study_and_can_be_requeued(
    tmp_path: Path, studies: Studies, bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    disk = DiskFull(monkeypatch)
    with service(inp, out, bundle, max_attempts=2, inputs="move", http_port=0):
        [path] = studies.copy(inp, 1)
        db = out / "jobs.sqlite3"
        wait_until(
            lambda: job_states(db) == {"failed": 1} and len(results(out)) == 1, 60, "the study to fail"
        )
        assert path.exists(), "the files of a failed study stay where they are"
        [record] = results(out)
        assert (record["status"], record["error_code"], record["job_state"]) == (
            "error",
            "write_failed",
            "failed",
        )
        assert "No space left on device" in record["message"]
        disk.failing = False
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        admin = subprocess.run(
            [sys.executable, "-m", "triage.cli.main", "jobs", str(out), "--requeue-failed"],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        assert admin.returncode == 0 and "re-queued 1" in admin.stdout, admin.stderr
        wait_until(lambda: job_states(db) == {"done": 1}, 60, "the re-queued study")
    assert not path.exists() and len(list((out / "processed").rglob("*.dcm"))) == 1
    assert [r["job_state"] for r in results(out)] == ["failed", "done"]


def test_a_permanent_failure_is_not_retried(tmp_path: Path, studies: Studies, bundle: Path) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    with service(inp, out, bundle, max_attempts=5, http_port=0):
        extra_image(
            studies.files[0],
            inp / "ct.dcm",
            11,
            new_study=True,
            Modality="CT",
            SOPClassUID=pydicom.uid.CTImageStorage,
        )
        db = out / "jobs.sqlite3"
        wait_until(lambda: job_states(db) == {"quarantined": 1}, 60, "quarantine")
    [(attempts, code)] = query(db, "SELECT attempts, error_code FROM jobs")
    assert (attempts, code) == (1, "unsupported_modality")
    [note] = (out / "quarantine").rglob("*.error.json")
    assert json.loads(note.read_text())["error_code"] == "unsupported_modality"


def test_low_disk_space_pauses_processing_and_reports_degraded(
    tmp_path: Path, studies: Studies, bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    real = shutil.disk_usage
    low = {"on": True}

    def disk_usage(path: Any) -> Any:
        usage = real(path)
        return usage._replace(free=0) if low["on"] else usage

    import serving.worker

    monkeypatch.setattr(serving.worker.shutil, "disk_usage", disk_usage)
    port = free_port()
    with service(inp, out, bundle, http_port=port):
        studies.copy(inp, 2)
        db = out / "jobs.sqlite3"
        wait_until(lambda: job_states(db) == {"queued": 2}, 60, "queued studies")
        wait_until(lambda: "disk" in http_get(f"http://127.0.0.1:{port}/healthz")[1], 30, "degraded health")
        status, body = http_get(f"http://127.0.0.1:{port}/healthz")
        assert status == 200 and json.loads(body)["status"] == "degraded"
        low["on"] = False
        wait_until(lambda: job_states(db) == {"done": 2}, 60, "processing to resume")
        assert json.loads(http_get(f"http://127.0.0.1:{port}/healthz")[1])["status"] == "ok"
