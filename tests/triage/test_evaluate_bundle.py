"""`triage evaluate` on a bundle runs with ONNX Runtime through the runtime's cascade (no torch: this suite
runs with torch blocked) and writes the report: Markdown, JSON, PNGs and per-image rows."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.bundles import build_tiny_bundle
from triage.bundle import load_bundle
from triage.cascade.models import CascadeModels
from triage.cascade.preprocess import fit, normalise
from triage.cli.main import app
from triage.io.dicom import read_image
from triage.metrics import mean_dice_per_image, pooled_dice
from triage.synth.dataset import SynthRequest, read_metadata, synthesize

runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "set"
    synthesize(SynthRequest(out, studies=12, positive_fraction=0.5, size=128, seed=9), workers=1)
    return out


def test_evaluate_a_bundle_writes_the_report(data: Path, tmp_path: Path) -> None:
    bundle = build_tiny_bundle(tmp_path / "bundle", gate=0.5, min_area=5)
    out = tmp_path / "report"
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--model",
            str(bundle),
            "--data",
            str(data),
            "--out",
            str(out),
            "--bootstrap",
            "50",
            "--cache",
            str(tmp_path / "cache"),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["model_kind"] == "bundle" and report["images"] == 12
    summary = report["sections"]["summary"]
    assert 0.0 <= summary["classifier"]["auc"] <= 1.0
    lo, hi = summary["classifier"]["auc_ci"]
    assert lo <= summary["classifier"]["auc"] <= hi
    assert set(summary["segmentation"]) == {"model", "none", "oracle"}
    assert set(report["sections"]["strata"]) >= {"size_stratum", "view", "photometric", "drain"}
    markdown = (out / "report.md").read_text()
    for heading in (
        "## Summary",
        "## Results per stratum",
        "## ROC curve",
        "## Threshold surface",
        "## Best and worst cases",
    ):
        assert heading in markdown
    for name in ("roc.png", "threshold_surface.png", "overlays.png"):
        with Image.open(out / name) as img:
            assert img.size[0] > 200 and len(np.unique(np.asarray(img))) > 20
    assert not (out / ".work").exists()
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert len(rows) == 12 and {r["image_id"] for r in rows} == {m["image_id"] for m in read_metadata(data)}


def test_bundle_numbers_equal_the_runtime_cascade(data: Path, tmp_path: Path) -> None:
    """Recompute the cascade's Dice from scratch with the runtime's pieces and triage.metrics."""
    from triage.cascade.postprocess import triplet_mask
    from triage.evaluation.models import from_bundle
    from triage.evaluation.report import evaluate

    root = build_tiny_bundle(tmp_path / "bundle", gate=0.4, min_area=5, tta=("none",))
    report = evaluate(
        from_bundle(root, "cpu"), data, tmp_path / "r", sections=("summary",), cache_dir=tmp_path / "cache"
    )
    bundle = load_bundle(root)
    models = CascadeModels(bundle, "cpu")
    preds, truths = [], []
    for row in read_metadata(data):
        pixels = read_image(data / row["dicom"]).pixels
        x = normalise(fit(pixels, bundle.classifier.input_size, "letterbox")[0], bundle.classifier)[None]
        prob, _ = models.gate(x, use_tta=False)
        seg_grid = fit(pixels, bundle.segmenter.input_size, "letterbox")[0]
        p = models.segment(normalise(seg_grid, bundle.segmenter)[None], use_tta=False)[0]
        preds.append(triplet_mask(p, bundle.thresholds) if prob[0] >= 0.4 else np.zeros(p.shape, bool))
        mask = np.asarray(Image.open(data / row["mask"])) > 0
        cover = fit(mask.astype(np.float32), bundle.segmenter.input_size, "letterbox")[0]
        truths.append(cover >= 0.5 if (cover >= 0.5).any() or not mask.any() else cover >= 0.5 * cover.max())
    seg = report["sections"]["summary"]["segmentation"]["model"]
    assert seg["dice_per_image"] == pytest.approx(
        mean_dice_per_image(np.stack(preds), np.stack(truths)), abs=1e-6
    )
    assert seg["dice"] == pytest.approx(pooled_dice(np.stack(preds), np.stack(truths)), abs=1e-6)


def test_evaluate_errors_are_one_line(data: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["evaluate", "--model", str(tmp_path), "--data", str(data), "--out", str(tmp_path / "r")]
    )
    assert result.exit_code == 2 and "neither a bundle (card.json) nor a training run" in result.output
