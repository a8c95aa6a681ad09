"""``triage train saliency --dual-encoder CLASSIFIER_RUN`` (seed 004's fused model as a product option):
the fused head is the same function as a 1×1 conv over the concatenation, stage 3 leaves the classifier
and the U-Net as they were trained, a run resumed after its U-Net finished does not train it again, bad
classifier runs stop before training, and the fused model exports into a bundle whose predictions carry
its score."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from training.config import read_config, resolve
from training.data import model_spec
from training.fusion import DualEncoderNet, FusionHead
from training.run import RunRequest, train
from training.run_format import build_network, read_run_card
from training.saliency.fusion_train import DualEncoder, data_overlap
from training.saliency.task import TargetSpec
from training.saliency.train import train_saliency
from training.saliency.unet_bench import load_test
from triage import metrics
from triage.cascade.preprocess import normalise


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "triage.cli.main", *args], capture_output=True, text=True, check=False, cwd=cwd
    )


def test_the_fusion_head_is_a_1x1_convolution_over_the_concatenation() -> None:
    torch.manual_seed(0)
    head = FusionHead(a_channels=6, d_channels=3, hidden=5)
    a, d = torch.randn(2, 6, 4, 4), torch.randn(2, 3, 16, 16)
    up = F.interpolate(a, size=(16, 16), mode="bilinear", align_corners=False)
    z = torch.relu(head.mix(torch.cat([up, d], dim=1))).mean(dim=(2, 3))
    torch.testing.assert_close(head(a, d), head.linear(z), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="decoder channels"):
        head(a, d[:, :2])
    with pytest.raises(ValueError, match="none given"):
        head(a)


@pytest.fixture(scope="module")
def runs(synth_data: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny classifier and segmenter (fold 0) and a dual-encoder saliency run on the classifier."""
    root = tmp_path_factory.mktemp("dual-runs")
    out: dict[str, Path] = {}
    for role in ("classifier", "segmenter"):
        cfg = resolve(role, "tiny", None, [], epochs=1)
        req = RunRequest(synth_data, root / role, fold=0, cache_dir=cache_dir, progress=False)
        (out[role],) = train(cfg, req)
    cfg = resolve("saliency", "tiny", None, [], epochs=1)
    req = RunRequest(synth_data, root / "saliency", fold=0, cache_dir=cache_dir, progress=False)
    stage3 = DualEncoder(out["classifier"], epochs=2, hidden=8)
    out["saliency"] = train_saliency(cfg, req, TargetSpec("heatmap"), None, stage3)
    return out


def test_stage_three_leaves_the_classifier_and_the_unet_as_trained(runs: dict[str, Path]) -> None:
    card = read_run_card(runs["saliency"])
    assert card.checkpoint == "fusion/best.safetensors"
    dual = card.provenance["dual_encoder"]
    assert (dual["hidden"], dual["epochs"]) == (8, 2)
    assert dual["validation_may_be_optimistic"] is None  # same data, same fold: no shared image
    fused = load_file(str(runs["saliency"] / card.checkpoint))
    cls_card = read_run_card(runs["classifier"])
    stage1 = load_file(str(runs["classifier"] / cls_card.checkpoint))
    stage2 = load_file(str(runs["saliency"] / "best.safetensors"))
    for prefix, stage in (("classifier.", stage1), ("saliency.", stage2)):
        for key, value in stage.items():  # weights and BatchNorm statistics
            assert torch.equal(fused[prefix + key], value), f"{prefix}{key} changed in stage 3"
    model = build_network(card)
    assert isinstance(model, DualEncoderNet)
    model.load_state_dict(fused)
    model.eval()
    unet = build_network(dataclasses.replace(card, provenance={}))  # the stage-2 U-Net alone
    unet.load_state_dict(stage2)
    x = torch.randn(3, 1, *card.input_size)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], unet.eval()(x)[0])  # the map is the U-Net's


def test_a_run_resumed_after_its_unet_finished_trains_only_the_head(
    runs: dict[str, Path], synth_data: Path, cache_dir: Path, tmp_path: Path
) -> None:
    run = tmp_path / "saliency"
    shutil.copytree(runs["saliency"], run)
    (run / "model.json").unlink()
    shutil.rmtree(run / "fusion")
    stage2 = (run / "best.safetensors").stat().st_mtime_ns
    cfg = resolve("saliency", "tiny", None, [], epochs=1)
    req = RunRequest(synth_data, run, fold=0, resume=True, cache_dir=cache_dir, progress=False)
    train_saliency(cfg, req, TargetSpec("heatmap"), None, DualEncoder(runs["classifier"], 2, 8))
    assert (run / "best.safetensors").stat().st_mtime_ns == stage2
    assert (run / "fusion" / "best.safetensors").is_file()
    assert read_run_card(run).provenance["dual_encoder"]["epochs"] == 2


def test_the_overlap_of_training_and_validation_images_is_named(runs: dict[str, Path]) -> None:
    trained = json.loads((runs["classifier"] / "data.json").read_text())["train"]
    assert data_overlap(runs["classifier"], [*trained[:3], "unseen"]) == (
        "the classifier trained on 3 of this run's 4 validation images"
    )
    assert "unknown" in (data_overlap(runs["segmenter"].parent / "nowhere", ["a"]) or "")


def test_bad_classifier_runs_stop_before_training(
    runs: dict[str, Path], synth_data: Path, tmp_path: Path
) -> None:
    other = tmp_path / "classifier-96"
    shutil.copytree(runs["classifier"], other)
    card = json.loads((other / "model.json").read_text())
    card["input_size"] = [96, 96]
    (other / "model.json").write_text(json.dumps(card))
    cases = {
        runs["segmenter"]: "a segmenter run; give a classifier run",
        other: "the classifier reads images with input_size [96, 96], the saliency run with [64, 64]",
    }
    for i, (given, message) in enumerate(cases.items()):
        out = tmp_path / f"out{i}"
        r = _cli("train", "saliency", "--data", str(synth_data), "--out", str(out), "--preset", "tiny",
                 "--dual-encoder", str(given), "--quiet")  # fmt: skip
        assert r.returncode == 2, r.stderr
        assert message in r.stderr and r.stderr.count("\n") == 1
        assert not (out / "metrics.csv").exists()


def test_the_fused_model_exports_and_predictions_carry_its_score(
    runs: dict[str, Path], synth_data: Path, tmp_path: Path
) -> None:
    bundle, thresholds = tmp_path / "bundle", tmp_path / "thresholds.json"
    # gate 0: every image is gated, so the saliency model runs on each
    triplet = {"top": 0.75, "min_area": 10, "bottom": 0.3, "min_component": 1}
    thresholds.write_text(json.dumps({"gate": 0.0, **triplet}))
    r = _cli("export", str(runs["classifier"]), str(runs["segmenter"]), str(runs["saliency"]),
             "--out", str(bundle), "--thresholds", str(thresholds))  # fmt: skip
    assert r.returncode == 0, r.stderr
    entry = json.loads((bundle / "card.json").read_text())["models"]["saliency"]
    assert entry["parity"]["passed"] and "probability" in entry["parity"]["max_abs_diff"]
    images = sorted((synth_data / "dicom-images-train").rglob("*.dcm"))[:6]
    r = _cli("predict", *map(str, images), "--model", str(bundle), "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert len(records) == 6
    scores = [rec["saliency_probability"] for rec in records]
    assert all(rec["gated"] for rec in records)
    assert all(0.0 < p < 1.0 for p in scores) and len(set(scores)) > 1, scores
    assert scores != [rec["probability"] for rec in records]  # the fused head's, not the gate's


def test_the_stage_by_stage_bench_reads_each_stage_of_a_run(
    runs: dict[str, Path], synth_data: Path, cache_dir: Path, tmp_path: Path
) -> None:
    from training.saliency import dual_runs

    out = tmp_path / "bench"
    argv = ["--runs", str(runs["saliency"]), "--test", str(synth_data), "--out", str(out)]
    control = ["--control", str(runs["saliency"])]  # the run as its own control: differences exactly 0
    assert dual_runs.main([*argv, *control, "--bootstrap", "20", "--cache", str(cache_dir)]) == 0
    result = json.loads((out / "results.json").read_text())
    preds = np.load(out / "predictions.npz")
    card = read_run_card(runs["classifier"])
    classifier = build_network(card)
    classifier.load_state_dict(load_file(str(runs["classifier"] / card.checkpoint)))
    test = load_test(synth_data, tuple(card.input_size), card.resize, cache_dir)
    spec = model_spec(read_config(runs["classifier"] / "config.yaml"))
    x = torch.from_numpy(np.stack([normalise(im, spec) for im in test["image"]]))
    with torch.no_grad():
        own = torch.sigmoid(classifier.eval()(x)[:, 0]).numpy()
    np.testing.assert_allclose(preds["classifier"][0], own, atol=1e-6)  # stage 1 is the classifier run
    assert not np.allclose(preds["fused"][0], own)
    y = preds["label"] > 0
    assert result["fused"]["seeds"] == pytest.approx([metrics.roc_auc(preds["fused"][0], y)])
    assert result["unet_head-control_unet_head"] == {"mean": 0.0, "ci": [0.0, 0.0]}
    assert result["fused-control_fused"]["mean"] == 0.0
    free = result["drain_free"]
    assert free["positives"] + free["negatives"] == int((~preds["drain"]).sum())
