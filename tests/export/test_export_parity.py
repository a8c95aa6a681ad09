"""`triage export` on tiny runs: the bundle decides exactly as the trained networks do, says so in its card,
and the runtime runs it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from typer.testing import CliRunner

from export.onnx_export import export_wrapper
from export.runs import load_run
from tests.export.conftest import Exported, synth_set
from training.torch_backend import TorchModel
from triage.bundle import file_sha256, load_bundle
from triage.cascade.items import load_item
from triage.cascade.models import CascadeModels, normalised_cam
from triage.cascade.postprocess import triplet_mask
from triage.cli.main import app
from triage.io.dicom import ReadPolicy


def test_graphs_have_opset_17_dynamic_batch_and_the_runtime_outputs(exported: Exported) -> None:
    root = exported.root / "bundle"
    cls = onnx.load(str(root / "classifier.onnx"))
    assert max(o.version for o in cls.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [o.name for o in cls.graph.output] == ["logit", "cam"]
    assert cls.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    seg = onnx.load(str(root / "segmenter.onnx"))
    assert [o.name for o in seg.graph.output] == ["probability"]
    b = exported.bundle
    assert b.classifier.outputs == {"logit": "logit", "cam": "cam"}
    assert b.segmenter.outputs == {"probability": "probability"}
    assert b.classifier.input_size == (64, 64) and b.classifier.normalization.kind == "meanstd"


def test_card_records_hashes_runtimes_parity_and_where_thresholds_came_from(exported: Exported) -> None:
    card = exported.card
    models = card["models"]
    assert isinstance(models, dict)
    root = exported.root / "bundle"
    for role in ("classifier", "segmenter"):
        entry = models[role]
        assert entry["sha256"] == file_sha256(root / entry["file"])
        assert entry["requires"]["runtime"] == "onnxruntime" and entry["requires"]["opsets"]["ai.onnx"] >= 17
        parity = entry["parity"]
        assert parity["passed"] and parity["images"] == 12 and parity["tolerance"]["probability"] == 1e-4
        assert parity["max_abs_diff"]["probability"] <= 1e-4
        int8 = entry["variants"]["int8"]
        assert int8["sha256"] == file_sha256(root / int8["file"])
    th = card["thresholds"]
    assert isinstance(th, dict)
    assert all(th["chosen_by"][k]["source"].startswith("--thresholds") for k in ("gate", "top", "bottom"))
    assert th["gate"] == json.loads(exported.thresholds.read_text())["gate"]
    assert card["provenance"]["exported"]["validation"]["images"] == 12  # type: ignore[index]
    assert load_bundle(root).content_hash == card["content_hash"]  # sealed: verifies at load


def test_gate_and_masks_are_decided_identically_on_both_sides(exported: Exported) -> None:
    """The card's figures: decisions occur on both sides of each threshold, and none differs."""
    cls = exported.card["models"]["classifier"]["parity"]  # type: ignore[index]
    seg = exported.card["models"]["segmenter"]["parity"]  # type: ignore[index]
    assert cls["gate_mismatches"] == 0 and cls["max_abs_diff"]["cam"] <= 1e-3
    assert seg["mask_mismatches"] == 0 and seg["mask_pixels_differing"] == 0
    assert 0 < seg["non_empty_masks"] < seg["images"] or seg["non_empty_masks"] > 0


def test_fresh_images_same_decisions_torch_vs_onnx(exported: Exported, tmp_path: Path) -> None:
    """Images the export never saw: ONNX Runtime gives torch's probabilities, CAMs and triplet masks."""
    b = exported.bundle
    runs = [load_run(p) for p in exported.runs]
    wrapped = {r.role: TorchModel(*export_wrapper(r)) for r in runs}
    torch_side = CascadeModels(b, "cpu", backends=wrapped)
    onnx_side = CascadeModels(b, "cpu", 1, variant="fp32")
    items = [
        load_item(str(p), b, ReadPolicy())
        for p in sorted(synth_set(tmp_path / "s", 6, seed=42).rglob("*.dcm"))
    ]
    x = np.stack([it.gate_input.x for it in items])  # type: ignore[union-attr]
    (p_t, cam_t), (p_o, cam_o) = torch_side.gate(x, True), onnx_side.gate(x, True)
    assert cam_t is not None and cam_o is not None
    np.testing.assert_allclose(p_o, p_t, atol=1e-5)
    np.testing.assert_allclose(normalised_cam(cam_o), normalised_cam(cam_t), atol=1e-4)
    assert ((p_o >= b.thresholds.gate) == (p_t >= b.thresholds.gate)).all()
    xs = np.stack([it.seg_input.x for it in items])  # type: ignore[union-attr]
    s_t, s_o = torch_side.segment(xs, True), onnx_side.segment(xs, True)
    np.testing.assert_allclose(s_o, s_t, atol=1e-5)
    for a, c in zip(s_t, s_o, strict=True):
        assert (triplet_mask(a, b.thresholds) == triplet_mask(c, b.thresholds)).all()


def test_cli_exports_and_predict_runs_the_bundle(exported: Exported, tmp_path: Path) -> None:
    runner = CliRunner()
    cls, seg = exported.runs
    out = tmp_path / "cli-bundle"
    result = runner.invoke(
        app,
        [
            "export",
            str(cls),
            str(seg),
            "--out",
            str(out),
            "--validation",
            str(exported.validation),
            "--thresholds",
            str(exported.thresholds),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "parity" in result.output and load_bundle(out).name == "cli-bundle"
    pred = runner.invoke(
        app,
        [
            "predict",
            str(exported.validation),
            "--model",
            str(out),
            "--out",
            str(tmp_path / "pred"),
            "--format",
            "seg",
        ],
    )
    assert pred.exit_code == 0, pred.output
    lines = (tmp_path / "pred" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 12 and all(json.loads(line)["status"] == "ok" for line in lines)
