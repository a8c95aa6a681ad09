"""A saliency run exports to ONNX (parity with torch), joins a bundle, and `triage predict` writes its map
beside the CAM: the PNG panel and a DICOM Secondary Capture that passes dciodvfy."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from safetensors.torch import save_file

from export.errors import ExportError
from export.saliency import add_to_bundle
from tests.bundles import build_tiny_bundle
from training.models import ArchSpec, build_model
from training.run_format import RunCard, write_run_card
from triage.bundle import load_bundle
from triage.cascade.predict import PredictOptions, Predictor
from triage.synth.dataset import SynthRequest, synthesize

TINY_SAL = ArchSpec("saliency", "tu-resnet10t", options={"encoder_depth": 3, "decoder_channels": [16, 8, 8]})


def saliency_run(root: Path, size: int = 64) -> Path:
    torch.manual_seed(0)
    model = build_model(TINY_SAL)
    root.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "best.safetensors"))
    write_run_card(
        root,
        RunCard(
            role="saliency",
            arch=TINY_SAL,
            input_size=(size, size),
            normalization={"kind": "meanstd", "mean": [0.5], "std": [0.25]},
            provenance={"map_activation": "spatial_softmax", "target": {"kind": "heatmap"}},
        ),
    )
    return root


def test_export_joins_the_bundle_and_predict_writes_the_map(tmp_path: Path) -> None:
    run = saliency_run(tmp_path / "run")
    bundle_dir = build_tiny_bundle(tmp_path / "bundle", gate=0.0)  # every image is gated
    entry = add_to_bundle(run, bundle_dir)
    assert entry["outputs"] == {"map": "map", "logit": "logit"}
    assert entry["parity"]["passed"] and entry["parity"]["max_abs_diff"]["map"] < 1e-3
    bundle = load_bundle(bundle_dir)
    assert bundle.saliency is not None and bundle.saliency.input_size == (64, 64)
    card = json.loads((bundle_dir / "card.json").read_text())
    assert card["models"]["saliency"]["map_activation"] == "spatial_softmax"

    synthesize(SynthRequest(tmp_path / "synth", studies=3, size=128, seed=5), workers=1)
    out = tmp_path / "out"
    options = PredictOptions(formats=frozenset({"png", "sc", "saliency"}), threads=1, read_workers=1)
    summary = Predictor(bundle, options).run([str(tmp_path / "synth" / "dicom-images-train")], out)
    assert summary.failed == 0 and len(summary.records) == 3
    for record in summary.records:
        assert {"overlay_png", "sc", "saliency_png", "saliency_sc"} <= set(record.outputs)
        assert "saliency" in record.timings_ms
        sc = pydicom.dcmread(out / record.outputs["saliency_sc"])
        assert sc.SeriesNumber == 9104 and sc.Rows == 128 and sc.Columns == 128
        assert sc.pixel_array.max() > 200  # the map is scaled to its peak (then resized)
        source = pydicom.dcmread(record.input, stop_before_pixels=True)
        assert sc.StudyInstanceUID == source.StudyInstanceUID
    dciodvfy = pytest.importorskip("shutil").which("dciodvfy")
    if dciodvfy:
        proc = subprocess.run(
            [dciodvfy, str(out / summary.records[0].outputs["saliency_sc"])],
            capture_output=True,
            text=True,
            check=False,
        )
        assert not [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]


def test_a_run_of_another_role_is_refused(tmp_path: Path) -> None:
    run = saliency_run(tmp_path / "run")
    card = json.loads((run / "model.json").read_text())
    card["role"] = "segmenter"
    card["arch"]["kind"] = "segmenter"
    (run / "model.json").write_text(json.dumps(card))
    bundle_dir = build_tiny_bundle(tmp_path / "bundle")
    before = (bundle_dir / "card.json").read_bytes()
    with pytest.raises(ExportError, match="is a segmenter run, not a saliency run"):
        add_to_bundle(run, bundle_dir)
    assert (bundle_dir / "card.json").read_bytes() == before
    assert sorted(p.name for p in bundle_dir.parent.iterdir()) == ["bundle", "run"]  # no staging left
    assert not np.any([p.name == "saliency.onnx" for p in bundle_dir.iterdir()])


def test_a_trained_saliency_model_reaches_predict_through_the_cli(synth_data: Path, tmp_path: Path) -> None:
    """What a user does: `triage train saliency` on synthetic studies, `triage export-saliency` into a bundle,
    `triage predict`: the trained map appears as a PNG panel and a DICOM SC beside the CAM."""
    from typer.testing import CliRunner

    from triage.cli.main import app

    cli = CliRunner()
    run = tmp_path / "sal-run"
    train = ["train", "saliency", "--data", str(synth_data), "--out", str(run), "--preset", "tiny",
             "--target", "heatmap", "--fold", "full", "--epochs", "1", "--quiet"]
    result = cli.invoke(app, train)
    assert result.exit_code == 0, result.output
    assert json.loads((run / "model.json").read_text())["role"] == "saliency"
    bundle_dir = build_tiny_bundle(tmp_path / "bundle", gate=0.0)
    result = cli.invoke(app, ["export-saliency", "--run", str(run), "--bundle", str(bundle_dir)])
    assert result.exit_code == 0, result.output
    assert load_bundle(bundle_dir).saliency is not None
    out = tmp_path / "out"
    result = cli.invoke(app, ["predict", str(synth_data / "dicom-images-train"), "--model", str(bundle_dir),
                              "--out", str(out), "--format", "png,saliency"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 24 and all(r["status"] == "ok" for r in records)
    for record in records:
        assert {"saliency_png", "saliency_sc"} <= set(record["outputs"])
        sc = pydicom.dcmread(out / record["outputs"]["saliency_sc"])
        assert sc.pixel_array.max() > 0  # a map, not an empty picture
