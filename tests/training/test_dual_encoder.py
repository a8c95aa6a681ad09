"""Seed 004's dual-encoder model: stage 3 trains only its head (the classifier and the saliency U-Net keep
their weights and BatchNorm statistics), the fused head reads the U-Net, and a run reports paired AUC
differences consistent with its per-seed AUCs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training.saliency.dual_encoder import DualSetup, FusionHead, MiniUNet, _tensors, fit_head, run
from training.saliency.protocol import FitSettings, Tensors, small_cam_net
from triage import metrics


def _data(n: int = 8) -> Tensors:
    g = torch.Generator().manual_seed(0)
    return Tensors(torch.randn(n, 1, 32, 32, generator=g), (torch.arange(n) % 2).float())


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_stage_three_trains_the_head_only() -> None:
    classifier, unet = small_cam_net(1, 8, 8, 0), MiniUNet(8)
    before_cls, before_unet = _state(classifier), _state(unet)
    head = FusionHead(classifier, unet, hidden=8)
    before_head = _state(head.fuse)
    fit_head(head, _data(), FitSettings(epochs=2, batch_size=4, seed=0))
    for before, module in ((before_cls, classifier), (before_unet, unet)):
        after = module.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), "a frozen stage changed"
    assert any(not torch.equal(before_head[k], v) for k, v in head.fuse.state_dict().items())


def test_the_fused_head_reads_the_unet_and_the_control_does_not() -> None:
    classifier, unet = small_cam_net(1, 8, 8, 0), MiniUNet(8)
    dual, control = FusionHead(classifier, unet, hidden=8), FusionHead(classifier, None, hidden=8)
    x = _data(4).image
    with torch.no_grad():
        d0, c0 = dual(x).clone(), control(x).clone()
        unet.dec[-1][0].weight.mul_(3.0)  # change the decoder's last features
        d1, c1 = dual(x), control(x)
    assert not torch.allclose(d0, d1)
    assert torch.equal(c0, c1)


def test_a_run_reports_paired_differences_of_its_own_aucs(
    synth_data: Path, cache_dir: Path, tmp_path: Path
) -> None:
    setup = DualSetup(
        synth_data,
        synth_data,
        tmp_path,
        seeds=2,
        input_size=32,
        stride=4,
        epochs=1,
        bootstrap=20,
        cache=cache_dir,
    )
    result = run(setup, log=lambda _: None)
    preds = np.load(tmp_path / "predictions.npz")
    y = preds["label"] > 0
    for arm in ("classifier", "head_only", "dual"):
        seeds = [metrics.roc_auc(p, y) for p in preds[arm]]
        assert result["auc"][arm]["seeds"] == pytest.approx(seeds)
        assert result["auc"][arm]["mean"] == pytest.approx(np.mean(seeds))
    diff = result["auc"]["dual-classifier"]
    assert diff["mean"] == pytest.approx(result["auc"]["dual"]["mean"] - result["auc"]["classifier"]["mean"])
    assert diff["ci"][0] <= diff["ci"][1]
    rows = (tmp_path / "models.csv").read_text().splitlines()
    assert len(rows) == 3 and "unet_kl" in rows[0]
    assert set(json.loads((tmp_path / "results.json").read_text())["maps"]) >= {"unet", "cam", "centre"}


def test_the_lesion_free_control_target_is_the_lung_mask() -> None:
    rng = np.random.default_rng(0)
    lungs = rng.random((3, 8, 8)) > 0.5
    data = {"image": rng.random((3, 8, 8)), "label": np.array([0, 1, 1]), "lungs": lungs,
            "target": rng.random((3, 8, 8))}  # fmt: skip
    _, heatmap = _tensors(data, 0.0, 1.0)
    _, control = _tensors(data, 0.0, 1.0, "lungs")
    assert torch.equal(heatmap[:, 0], torch.from_numpy(data["target"].astype(np.float32)))
    assert torch.equal(control[:, 0], torch.from_numpy(lungs.astype(np.float32)))
    with pytest.raises(ValueError, match="target must be one of"):
        DualSetup(Path("a"), Path("b"), Path("c"), target="lesion")
