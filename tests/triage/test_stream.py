"""run_stream: the cascade over keyed inputs for services — the same records and files as
Predictor.run, every key answered once, and inputs pulled lazily (bounded read-ahead)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bundles import build_tiny_bundle
from triage.bundle import load_bundle
from triage.cascade.predict import PredictOptions, Predictor
from triage.cascade.stream import run_stream
from triage.outputs.records import ResultRecord
from triage.synth.dataset import SynthRequest, synthesize

FORMATS = frozenset({"png", "seg", "sc", "sr"})


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("stream")
    synthesize(SynthRequest(root, studies=12, size=128, seed=4), workers=1)
    found = sorted((root / "dicom-images-train").rglob("*.dcm"))
    (root / "notes.txt").write_text("not an image")
    return [*found, root / "notes.txt"]


def test_stream_matches_predict_and_answers_every_key_once(files: list[Path], tmp_path: Path) -> None:
    bundle = load_bundle(build_tiny_bundle(tmp_path / "bundle", gate=0.0, with_saliency=True))
    options = PredictOptions(formats=FORMATS, batch_size=4, threads=1, read_workers=2)
    predictor = Predictor(bundle, options)
    batch = {r.input: r for r in predictor.run([str(f) for f in files], tmp_path / "batch").records}
    got: dict[int, ResultRecord] = {}
    pulled: list[int] = []

    def inputs() -> object:
        for i, f in enumerate(files):
            pulled.append(i)
            # in flight at most: reads ahead (2 batches) + the batch + writes pending (2 batches)
            assert len(pulled) - len(got) <= 5 * options.batch_size + 1, "read-ahead is bounded"
            yield i, str(f)

    def on_record(key: int, record: ResultRecord) -> None:
        assert key not in got
        got[key] = record

    n = run_stream(predictor.models, options, inputs(), tmp_path / "stream", on_record)  # type: ignore[arg-type]
    assert n == len(files) and sorted(got) == list(range(len(files)))
    for i, f in enumerate(files):
        a, b = got[i], batch[str(f)]
        assert (a.status, a.error_code, a.probability, a.positive, a.mask_area_px, a.outputs) == (
            b.status,
            b.error_code,
            b.probability,
            b.positive,
            b.mask_area_px,
            b.outputs,
        )
    assert got[len(files) - 1].error_code == "not_dicom"
    assert any(r.positive for r in got.values())
    for rel in (p for r in got.values() for p in r.outputs.values()):
        assert (tmp_path / "stream" / rel).read_bytes() == (tmp_path / "batch" / rel).read_bytes()
    assert not (tmp_path / "stream" / "results.jsonl").exists()
