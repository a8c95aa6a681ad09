"""Predictor.stream, the one cascade engine (``triage predict`` and the services call it):
the same records and files as Predictor.run, every key answered once, good records in input order,
inputs pulled lazily within the plan's bound, and the thread counts the options name."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bundles import build_tiny_bundle
from triage.bundle import Bundle, load_bundle
from triage.cascade.predict import PredictOptions, Predictor
from triage.outputs.records import ResultRecord
from triage.synth.dataset import SynthRequest, synthesize

FORMATS = frozenset({"png", "seg", "sc", "sr"})


def _without_timings(record: ResultRecord) -> dict[str, object]:
    fields = dict(json.loads(record.to_json()))
    fields.pop("timings_ms")
    return fields


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("stream")
    synthesize(SynthRequest(root, studies=12, size=128, seed=4), workers=1)
    found = sorted((root / "dicom-images-train").rglob("*.dcm"))
    (root / "notes.txt").write_text("not an image")
    return [*found[:6], root / "notes.txt", *found[6:]]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return load_bundle(build_tiny_bundle(tmp_path_factory.mktemp("bundle"), gate=0.0, with_saliency=True))


def test_stream_matches_run_and_answers_every_key_once_in_order(
    files: list[Path], bundle: Bundle, tmp_path: Path
) -> None:
    options = PredictOptions(formats=FORMATS, batch_size=2, threads=1, read_workers=1)
    predictor = Predictor(bundle, options)
    batch = {r.input: r for r in predictor.run([str(f) for f in files], tmp_path / "batch").records}
    bound = predictor.plan.in_flight(options.batch_size)
    assert bound < len(files), "the test needs more inputs than may be in flight"
    got: dict[int, ResultRecord] = {}
    order: list[int] = []
    pulled: list[int] = []
    pulled_at_first_record: list[int] = []

    def inputs() -> Iterator[tuple[int, str]]:
        for i, f in enumerate(files):
            pulled.append(i)
            assert len(pulled) - len(got) <= bound, "read-ahead is bounded by the plan"
            yield i, str(f)

    def on_record(key: int, record: ResultRecord) -> None:
        assert key not in got, "one record per input"
        assert threading.current_thread() is threading.main_thread(), "records come in the calling thread"
        if not got:
            pulled_at_first_record.append(len(pulled))
        got[key] = record
        order.append(key)

    summary = predictor.stream(inputs(), tmp_path / "stream", on_record)
    assert summary.records == len(files) and summary.failed == 1
    assert sorted(got) == list(range(len(files)))
    assert pulled_at_first_record[0] <= bound < len(files), "inputs are pulled lazily, not all at once"
    good = [k for k in order if got[k].status == "ok"]
    assert good == sorted(good), "records of good files come in input order"
    for i, f in enumerate(files):
        assert _without_timings(got[i]) == _without_timings(batch[str(f)])
    assert got[6].error_code == "not_dicom"
    assert any(r.positive for r in got.values())
    for rel in (p for r in got.values() for p in r.outputs.values()):
        assert (tmp_path / "stream" / rel).read_bytes() == (tmp_path / "batch" / rel).read_bytes()
    assert not (tmp_path / "stream" / "results.jsonl").exists(), "stream keeps no batch bookkeeping"


@pytest.mark.parametrize("write_workers", [1, 3])
def test_stream_uses_the_reader_and_writer_threads_the_options_name(
    files: list[Path], bundle: Bundle, tmp_path: Path, write_workers: int
) -> None:
    options = PredictOptions(
        formats=FORMATS, batch_size=4, threads=1, read_workers=2, write_workers=write_workers
    )
    predictor = Predictor(bundle, options)
    seen: dict[str, set[str]] = {"read": set(), "write": set()}

    def on_record(key: int, record: ResultRecord) -> None:
        for thread in threading.enumerate():
            prefix = thread.name.split("_")[0]
            if prefix in seen:
                seen[prefix].add(thread.name)

    predictor.stream(enumerate(str(f) for f in files), tmp_path, on_record)
    assert len(seen["write"]) == write_workers
    assert len(seen["read"]) == 2
    assert not [t for t in threading.enumerate() if t.name.startswith(("read_", "write_"))], "pools end"
