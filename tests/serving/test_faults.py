"""Fault injection on `triage watch` as a real process: kill -9 mid-batch, SIGTERM, a slowly growing
file, many studies dropped at once."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

import pydicom
import pytest

from tests.serving.conftest import Studies
from tests.serving.helpers import (
    QUICK,
    ServiceProcess,
    extra_image,
    job_states,
    query,
    results,
)


def _watch(inp: Path, out: Path, bundle: Path, log: Path, *extra: object) -> ServiceProcess:
    return ServiceProcess(
        "watch",
        [inp, "--out", out, "--model", bundle, *QUICK, *extra],
        log,
    ).start()


def _assert_one_result_per_study(out: Path, files: list[Path]) -> None:
    """Every input study has exactly one done version with one ok record per image; its outputs are
    there once (SC and SR per image, SEG per positive image) and no temporary file is left."""
    sops = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}
    records = results(out)
    assert Counter(r["sop_uid"] for r in records) == Counter(dict.fromkeys(sops, 1))
    assert {r["status"] for r in records} == {"ok"} and {r["version"] for r in records} == {1}
    assert job_states(out / "jobs.sqlite3") == {"done": len(files)}
    studies = out / "studies"
    for record in records:
        folder = studies / record["study_uid"]
        names = sorted(p.name for p in folder.iterdir())
        sop = record["sop_uid"]
        expected = {f"{sop}_sc.dcm", f"{sop}_sr.dcm", f"{sop}_overlay.png"}
        if record["positive"]:
            expected |= {f"{sop}_seg.dcm", f"{sop}_mask.png"}
        assert set(names) == expected, (names, record["positive"])
    assert not [p for p in out.rglob("*") if p.name.startswith(".") and p.name.endswith(".tmp")]


@pytest.mark.slow
def test_kill9_mid_batch_then_restart_every_study_exactly_once(
    tmp_path: Path, studies: Studies, bundle: Path
) -> None:
    inp, out, actions = tmp_path / "in", tmp_path / "out", tmp_path / "actions"
    actions.mkdir()
    files = studies.copy(tmp_path / "stage", 50)
    sent = [tmp_path / "sent" / f.name for f in files]
    for f, s in zip(files, sent, strict=True):
        s.parent.mkdir(exist_ok=True)
        s.write_bytes(f.read_bytes())
    os.rename(tmp_path / "stage", inp)
    db = out / "jobs.sqlite3"
    args = (
        "--quiet-seconds",
        0.3,
        "--inputs",
        "delete",
        "--on-positive",
        f"cat > {actions}/$TRIAGE_STUDY_UID.$TRIAGE_ACTION_ID.$$.json",
    )

    def done() -> int:
        return job_states(db).get("done", 0)

    # kill -9 at three points: while files are being taken in, early and late in processing
    kills = [lambda: sum(job_states(db).values()) >= 1, lambda: done() >= 12, lambda: done() >= 30]
    for n, moment in enumerate(kills):
        proc = _watch(inp, out, bundle, tmp_path / f"run{n}.log", *args)
        proc.wait_until(moment, 120, f"kill point {n}")
        proc.kill9()
    final = _watch(inp, out, bundle, tmp_path / "final.log", *args, "--once")
    assert final.wait(180) == 0, final.tail()
    _assert_one_result_per_study(out, sent)
    assert not any(p.is_file() for p in inp.rglob("*")), "--inputs delete leaves nothing behind"
    positive = {s for (s,) in query(db, "SELECT study_uid FROM jobs WHERE positive=1")}
    dumps = [p.name.removesuffix(".json").rsplit(".", 2) for p in actions.glob("*.json")]
    runs = Counter(study for study, _, _ in dumps)
    assert set(runs) == positive, "every positive study, and only those, notified"
    assert len({(study, action) for study, action, _ in dumps}) == len(positive), "one action per study"
    assert sum(n - 1 for n in runs.values()) <= len(kills), "a repeat only for an action a kill interrupted"
    # A kill can land while the command runs (its file created, the record not yet on its stdin): that
    # action is run again after the restart, and the complete run's dump is the one that counts.
    complete: dict[str, list[dict[str, object]]] = {}
    for dump in actions.glob("*.json"):
        study = dump.name.rsplit(".", 3)[0]
        text = dump.read_text()
        if text.strip():
            complete.setdefault(study, []).append(json.loads(text))
        else:
            assert runs[study] > 1, f"{dump.name}: an empty dump for an action that was not run again"
    assert set(complete) == positive
    assert all(record["positive"] is True for records in complete.values() for record in records)


def test_sigterm_finishes_current_studies_and_exits_0(tmp_path: Path, studies: Studies, bundle: Path) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    files = studies.copy(tmp_path / "sent", 30, start=20)
    db = out / "jobs.sqlite3"
    proc = _watch(inp, out, bundle, tmp_path / "run.log", "--quiet-seconds", 0.3)
    proc.wait_until(db.exists, 60, "the service to start")
    os.rename(tmp_path / "sent", inp / "batch")
    proc.wait_until(lambda: job_states(db).get("done", 0) >= 3, 60, "some studies done")
    started = time.monotonic()
    assert proc.terminate(timeout=60) == 0, proc.tail()
    assert time.monotonic() - started < 30
    states = job_states(db)
    assert "running" not in states, states
    assert len(results(out)) == states["done"], "every committed study is in results.jsonl, no more"
    events = [e.get("event") for e in proc.log_entries()]
    assert "stop_requested" in events and events[-1] == "stopped"
    assert "study_started" not in events[events.index("stop_requested") :], "no study started after SIGTERM"
    again = _watch(inp, out, bundle, tmp_path / "again.log", "--quiet-seconds", 0.3, "--once")
    assert again.wait(120) == 0, again.tail()
    _assert_one_result_per_study(out, [inp / "batch" / f.relative_to(tmp_path / "sent") for f in files])


def _write_slowly(path: Path, data: bytes, chunks: int, pause: float) -> float:
    """Write ``data`` in ``chunks`` pieces with ``pause`` seconds between them (one open file); returns
    the wall time of the close."""
    step = -(-len(data) // chunks)
    with open(path, "wb") as fh:
        for i in range(0, len(data), step):
            fh.write(data[i : i + step])
            fh.flush()
            os.fsync(fh.fileno())
            if i + step < len(data):
                time.sleep(pause)
    return time.time()


@pytest.mark.parametrize(("mode", "quiet", "pause"), [("inotify", 0.4, 1.0), ("poll", 1.5, 0.5)])
def test_a_slowly_growing_file_is_not_read_before_it_is_complete(
    tmp_path: Path, studies: Studies, bundle: Path, mode: str, quiet: float, pause: float
) -> None:
    """inotify: the writer pauses for longer than the quiet period, but keeps the file open; polling
    (no open-file information): the pauses are shorter than the quiet period."""
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    db = out / "jobs.sqlite3"
    poll = ["--poll", "--poll-interval", 0.2] if mode == "poll" else []
    proc = _watch(inp, out, bundle, tmp_path / "run.log", "--quiet-seconds", quiet, *poll)
    # Writing may start only once the watcher watches: a file opened before that is found by the start-up
    # scan, without the open-file events (docs/deploy.md), and the quiet period alone decides.
    started = lambda: proc.log.is_file() and '"watch_started"' in proc.log.read_text()  # noqa: E731
    proc.wait_until(started, 60, "the service to watch")
    time.sleep(0.5)
    data = studies.files[0].read_bytes()
    closed = _write_slowly(inp / "slow.dcm", data, chunks=4, pause=pause)
    proc.wait_until(lambda: bool(results(out)), 60, "the result")
    proc.terminate()
    [record] = results(out)
    assert record["status"] == "ok", record
    [(size, arrived)] = query(db, "SELECT size, arrived_at FROM files")
    assert size == len(data) and arrived >= closed - 0.05
    assert not (out / "quarantine").exists()


@pytest.mark.slow
def test_many_studies_dropped_at_once_all_processed_with_bounded_memory(
    tmp_path: Path, studies: Studies, bundle: Path
) -> None:
    """150 studies (copies of the synthetic set under new UIDs) arrive in one rename; the throughput
    comparison with `triage predict` on 500 studies is benchmarks/bench_service.py (docs/deploy.md)."""
    inp, stage, out = tmp_path / "in", tmp_path / "stage", tmp_path / "out"
    inp.mkdir()
    files = [
        extra_image(studies.files[i % len(studies.files)], stage / f"s{i:03d}.dcm", 100 + i, new_study=True)
        for i in range(150)
    ]
    sops = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    db = out / "jobs.sqlite3"
    proc = _watch(inp, out, bundle, tmp_path / "run.log", "--quiet-seconds", 0.5, "--format", "png,seg,sc")
    proc.wait_until(db.exists, 60, "the service to start")
    os.rename(stage, inp / "drop")
    proc.wait_until(lambda: job_states(db).get("done", 0) == 150, 240, "150 studies")
    peak = proc.peak_rss_mb()
    assert proc.terminate() == 0
    records = results(out)
    assert len(records) == 150 and {r["status"] for r in records} == {"ok"}
    assert {r["sop_uid"] for r in records} == sops
    assert peak < 600, f"peak resident memory {peak:.0f} MB"
