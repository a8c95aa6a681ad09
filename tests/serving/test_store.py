"""The job store's state machine, versions and crash recovery; results.jsonl export; file operations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serving.fileops import FileOps
from serving.results import ResultsLog
from serving.store import Arrival, JobStore, Outcome, StoreError

STUDY = "1.2.3.4"


def arrival(path: Path, sop: str, study: str = STUDY, at: float = 100.0, size: int = 10) -> Arrival:
    return Arrival(str(path), size, 1, at, study, sop)


def ok(path: str, sop: str, study: str = STUDY) -> dict[str, object]:
    return {"input": path, "status": "ok", "study_uid": study, "sop_uid": sop, "probability": 0.1}


def states(store: JobStore) -> dict[str, int]:
    return store.counts("jobs")


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(tmp_path / "jobs.sqlite3", "sha256:bundle")


def run_to_done(store: JobStore, records: dict[str, dict[str, object]] | None = None) -> int:
    claim = store.claim(1000.0)
    assert claim is not None
    recs = [records[i.sop_uid] if records else ok(str(i.path), i.sop_uid) for i in claim.images]
    store.finish(claim.job_id, Outcome("done", recs, positive=False))
    return claim.job_id


def test_a_study_goes_received_queued_running_done(store: JobStore, tmp_path: Path) -> None:
    store.register(arrival(tmp_path / "a.dcm", "1.1"))
    store.register(arrival(tmp_path / "b.dcm", "1.2", at=105.0))
    assert states(store) == {"received": 1}
    assert store.received_due(now=110.0, quiet=10) == []  # the second image arrived 5 s ago
    [(job, study, last, paths)] = store.received_due(now=115.0, quiet=10)
    assert (study, last, sorted(paths)) == (STUDY, 105.0, [str(tmp_path / "a.dcm"), str(tmp_path / "b.dcm")])
    assert store.queue(job) and states(store) == {"queued": 1}
    claim = store.claim(1000.0)
    assert claim is not None and claim.version == 1 and claim.attempts == 1
    assert sorted(i.sop_uid for i in claim.images) == ["1.1", "1.2"]
    assert states(store) == {"running": 1} and store.claim(1000.0) is None
    store.finish(claim.job_id, Outcome("done", [ok("a", "1.1"), ok("b", "1.2")], positive=True, priority=1.2))
    assert states(store) == {"done": 1} and store.idle()
    assert [j.records for j in store.unexported()] == [[ok("a", "1.1"), ok("b", "1.2")]]


def test_a_new_image_after_done_makes_a_new_version_a_resent_one_does_not(
    store: JobStore, tmp_path: Path
) -> None:
    store.register(arrival(tmp_path / "a.dcm", "1.1"))
    store.queue(store.received_due(200.0, 10)[0][0])
    run_to_done(store)
    store.register(arrival(tmp_path / "a-again.dcm", "1.1", at=300.0))  # the same image sent again
    [(job, *_)] = store.received_due(400.0, 10)
    assert not store.queue(job) and states(store) == {"done": 1}
    store.register(arrival(tmp_path / "c.dcm", "1.3", at=500.0))
    [(job, *_)] = store.received_due(600.0, 10)
    assert store.queue(job)
    claim = store.claim(1000.0)
    assert claim is not None and claim.version == 2
    assert sorted(i.sop_uid for i in claim.images) == ["1.1", "1.3"]


def test_an_image_whose_file_is_gone_carries_its_earlier_record(store: JobStore, tmp_path: Path) -> None:
    first = store.register(arrival(tmp_path / "a.dcm", "1.1"))
    store.queue(store.received_due(200.0, 10)[0][0])
    run_to_done(store)
    store.op_done(first, "deleted")  # --inputs delete removed it after version 1
    store.register(arrival(tmp_path / "b.dcm", "1.2", at=300.0))
    store.queue(store.received_due(400.0, 10)[0][0])
    claim = store.claim(1000.0)
    assert claim is not None
    by_sop = {i.sop_uid: i for i in claim.images}
    assert by_sop["1.1"].path is None and by_sop["1.1"].carried == ok(str(tmp_path / "a.dcm"), "1.1")
    assert by_sop["1.2"].path == str(tmp_path / "b.dcm")


def test_an_older_queued_version_is_superseded_by_a_newer_one(store: JobStore, tmp_path: Path) -> None:
    store.register(arrival(tmp_path / "a.dcm", "1.1"))
    store.queue(store.received_due(200.0, 10)[0][0])
    store.register(arrival(tmp_path / "b.dcm", "1.2", at=300.0))
    store.queue(store.received_due(400.0, 10)[0][0])
    assert states(store) == {"superseded": 1, "queued": 1}
    claim = store.claim(1000.0)
    assert claim is not None and claim.version == 2 and len(claim.images) == 2


def test_running_versions_are_requeued_at_start_up_and_failed_after_too_many(
    store: JobStore, tmp_path: Path
) -> None:
    store.register(arrival(tmp_path / "a.dcm", "1.1"))
    store.queue(store.received_due(200.0, 10)[0][0])
    for _ in range(2):  # two crashes while processing it
        assert store.claim(1000.0) is not None
        assert store.recover_running(max_attempts=3) == (1, 0)
    assert store.claim(1000.0) is not None
    assert store.recover_running(max_attempts=3) == (0, 1)
    [job] = store.unexported()
    assert job.state == "failed" and job.records[0]["error_code"] == "internal_error"
    assert "3 times" in job.records[0]["message"]
    assert store.requeue_failed() == 1 and states(store) == {"queued": 1}


def test_unreadable_file_gets_a_quarantined_job_of_its_own(store: JobStore, tmp_path: Path) -> None:
    error = {"input": str(tmp_path / "x.txt"), "status": "error", "error_code": "not_dicom", "message": "no"}
    file_id = store.register(Arrival(str(tmp_path / "x.txt"), 3, 1, 100.0, None, None, error))
    assert store.unattributed_quarantined() == 1 and states(store) == {}
    [op] = store.pending_ops()
    assert (op.file_id, op.op, op.error) == (file_id, "quarantine", error)
    assert store.is_known(str(tmp_path / "x.txt"), 3, 1)


def test_the_schema_version_is_checked(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3", "h")
    with store.tx() as c:
        c.execute("UPDATE meta SET value='99' WHERE key='schema'")
    store.close()
    with pytest.raises(StoreError, match="schema 99"):
        JobStore(tmp_path / "jobs.sqlite3", "h")


def _done_jobs(store: JobStore, tmp_path: Path, n: int, first: int = 1) -> None:
    for i in range(n):
        study = f"1.2.{first + i}"
        store.register(arrival(tmp_path / f"{i}.dcm", f"{study}.1", study=study))
    for job, *_ in store.received_due(200.0, 10):
        store.queue(job)
    for _ in range(n):
        run_to_done(store)


def test_results_log_survives_a_crash_between_commit_and_append(store: JobStore, tmp_path: Path) -> None:
    log = ResultsLog(tmp_path, store)
    _done_jobs(store, tmp_path, 2)
    log.reconcile()
    lines = log.path.read_text().splitlines()
    assert [json.loads(x)["job"] for x in lines] == [1, 2]
    # a third study is committed; the crash comes after its line was appended, before it was recorded
    _done_jobs(store, tmp_path, 1, first=3)
    [job] = store.unexported()
    with open(log.path, "a") as fh:
        fh.write(json.dumps({"job": job.job_id}) + "\n" + '{"job": 3, "torn')
    ResultsLog(tmp_path, store).reconcile()
    jobs = [json.loads(x)["job"] for x in log.path.read_text().splitlines()]
    assert jobs == [1, 2, 3]


def test_a_crash_in_the_first_append_leaves_the_file_the_services(store: JobStore, tmp_path: Path) -> None:
    log = ResultsLog(tmp_path, store)
    log.reconcile()  # first start: empty file, claimed by the store before anything is appended
    assert log.path.read_bytes() == b"" and store.results_offset() == 0
    _done_jobs(store, tmp_path, 1)
    [job] = store.unexported()
    log.path.write_text(json.dumps({"job": job.job_id}) + "\n")  # appended, then killed before the record
    assert store.results_offset() is not None  # what the service checks before it takes an --out
    ResultsLog(tmp_path, store).reconcile()
    assert [json.loads(x)["job"] for x in log.path.read_text().splitlines()] == [1]


def test_results_log_rebuilt_when_shorter_than_the_store_says(store: JobStore, tmp_path: Path) -> None:
    log = ResultsLog(tmp_path, store)
    _done_jobs(store, tmp_path, 3)
    log.reconcile()
    log.path.write_text("")  # rotated away by hand
    ResultsLog(tmp_path, store).reconcile()
    assert [json.loads(x)["job"] for x in log.path.read_text().splitlines()] == [1, 2, 3]


def test_file_operations_are_idempotent(store: JobStore, tmp_path: Path) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    (inp / "sub").mkdir(parents=True)
    moved, gone, bad = inp / "sub" / "a.dcm", inp / "sub" / "b.dcm", inp / "sub" / "c.bin"
    for path in (moved, gone, bad):
        path.write_bytes(b"x")
    ids = [store.register(arrival(moved, "1.1")), store.register(arrival(gone, "1.2"))]
    error = {"input": str(bad), "status": "error", "error_code": "not_dicom", "message": "no"}
    store.register(Arrival(str(bad), 1, 1, 1.0, None, None, error))
    store.set_ops([(ids[0], "move"), (ids[1], "delete")])
    ops = FileOps(store, out, (inp,))
    # a crash after the quarantine's error record was written, before the move
    note = out / "quarantine" / "20240101" / "3-c.bin.error.json"
    note.parent.mkdir(parents=True)
    note.write_text("{}")
    assert ops.run_pending() == 3 and store.pending_ops() == []
    assert (out / "processed" / STUDY / "1.1.dcm").read_bytes() == b"x"
    assert not gone.exists() and not inp.joinpath("sub").exists() and inp.exists()
    assert (note.parent / "3-c.bin").exists() and json.loads(note.read_text())["error_code"] == "not_dicom"
    assert len(list((out / "quarantine").rglob("*"))) == 3  # the folder, the file, its record


def test_a_version_queued_before_a_bundle_upgrade_is_keyed_by_the_bundle_that_runs_it(tmp_path: Path) -> None:
    old = JobStore(tmp_path / "jobs.sqlite3", "sha256:old")
    old.register(arrival(tmp_path / "a.dcm", "1.1"))
    old.queue(old.received_due(200.0, 10)[0][0])
    old.close()
    new = JobStore(tmp_path / "jobs.sqlite3", "sha256:new")
    claim = new.claim(1000.0)
    assert claim is not None
    new.finish(claim.job_id, Outcome("done", [ok("a", "1.1")]))
    assert new.jobs(("done",))[0]["bundle"] == "sha256:new"
    new.register(arrival(tmp_path / "a2.dcm", "1.1", at=300.0))  # re-sent: already done with this bundle
    assert not new.queue(new.received_due(400.0, 10)[0][0])


V1_OUTBOX = """CREATE TABLE outbox (
    id INTEGER PRIMARY KEY, job_id INTEGER NOT NULL, study_uid TEXT NOT NULL, kind TEXT NOT NULL,
    path TEXT NOT NULL, sop_uid TEXT NOT NULL, sop_class TEXT NOT NULL, digest TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0, last_error TEXT, created_at REAL NOT NULL, delivered_at REAL,
    UNIQUE (sop_uid, digest))"""


def test_a_schema_1_store_is_migrated_its_outbox_rows_become_c_store_rows(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3", "h")
    with store.tx() as c:  # the store as triage with schema 1 left it: one undelivered object
        c.execute("DROP TABLE outbox")
        c.execute(V1_OUTBOX)
        c.execute(
            "INSERT INTO outbox (job_id, study_uid, kind, path, sop_uid, sop_class, digest, attempts,"
            " last_error, created_at) VALUES (1, '1.2', 'sr', 'x_sr.dcm', '1.2.3', '1.2.840', 'd',"
            " 3, 'cannot connect', 5.0)"
        )
        c.execute("UPDATE meta SET value='1' WHERE key='schema'")
    store.close()
    store = JobStore(tmp_path / "jobs.sqlite3", "h")
    [row] = store.due("outbox", 1e12)
    assert (row["dest"], row["sop_uid"], row["attempts"], row["last_error"]) == (
        "dimse",
        "1.2.3",
        3,
        "cannot connect",
    )
    assert store.outbox_counts() == {("dimse", "pending"): 1}
    store.close()
    reopened = JobStore(tmp_path / "jobs.sqlite3", "h")  # schema 2 now: opened as is
    assert reopened.outbox_counts() == {("dimse", "pending"): 1}


def test_each_forwarding_destination_has_its_own_outbox_rows(store: JobStore, tmp_path: Path) -> None:
    from serving.store import OutboxItem

    store.destinations = ("dimse", "stow")
    store.register(arrival(tmp_path / "a.dcm", "1.1"))
    [(job, *_)] = store.received_due(now=1000.0, quiet=10)
    assert store.queue(job)
    claim = store.claim(1000.0)
    assert claim is not None
    item = OutboxItem("sr", "studies/x_sr.dcm", "9.9", "1.2.840.10008.5.1.4.1.1.88.22", "digest")
    store.finish(
        claim.job_id, Outcome("done", [ok(str(tmp_path / "a.dcm"), "1.1")], positive=False, outbox=[item])
    )
    rows = {r["dest"]: r for r in store.due("outbox", 1e12)}
    assert set(rows) == {"dimse", "stow"}
    store.set_row("outbox", int(rows["stow"]["id"]), state="delivered")
    assert [r["dest"] for r in store.due("outbox", 1e12, dest="dimse")] == ["dimse"]
    assert store.due("outbox", 1e12, dest="stow") == []
    assert store.outbox_counts() == {("dimse", "pending"): 1, ("stow", "delivered"): 1}
