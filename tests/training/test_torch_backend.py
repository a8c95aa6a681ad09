"""The PyTorch development backend runs training modules through the runtime's own cascade."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from tests.bundles import build_tiny_bundle
from training.models import ArchSpec, ClassifierForExport, SegmenterForExport, build_model
from training.torch_backend import TorchModel
from triage.bundle import load_bundle
from triage.cascade.models import CascadeModels
from triage.cascade.predict import PredictOptions, Predictor
from triage.synth.dataset import SynthRequest, synthesize


def test_torch_modules_through_the_runtime_cascade(tmp_path: Path) -> None:
    synthesize(SynthRequest(tmp_path / "synth", studies=6, size=128, seed=5), workers=1)
    bundle = load_bundle(build_tiny_bundle(tmp_path / "bundle", gate=0.0))  # card: sizes, thresholds, TTA
    torch.manual_seed(0)
    classifier = build_model(ArchSpec("classifier", "resnet10t")).eval()
    segmenter = build_model(
        ArchSpec("segmenter", "tu-resnet10t", options={"encoder_depth": 3, "decoder_channels": [32, 16, 8]})
    ).eval()
    backends = {
        "classifier": TorchModel(ClassifierForExport(classifier), ["logit", "cam"]),  # type: ignore[arg-type]
        "segmenter": TorchModel(SegmenterForExport(segmenter), ["probability"]),  # type: ignore[arg-type]
    }
    models = CascadeModels(bundle, "cpu", backends=backends)  # type: ignore[arg-type]
    assert models.provider == "torch-cpu"
    summary = Predictor(bundle, PredictOptions(formats=frozenset({"png"})), models).run(
        [str(tmp_path / "synth" / "dicom-images-train")], tmp_path / "out"
    )
    assert len(summary.records) == 6 and not summary.failed
    records = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert all(r["gated"] and 0.0 <= r["probability"] <= 1.0 for r in records)
    x = np.zeros((2, 1, 64, 64), np.float32)
    out = backends["classifier"](x)
    assert out["logit"].shape == (2, 1) and out["cam"].shape == (2, 1, 2, 2)
    np.testing.assert_allclose(out["cam"].mean(axis=(2, 3)), out["logit"], rtol=1e-5, atol=1e-5)
