"""Cross-validation with out-of-fold predictions, the threshold search written into the run cards, the
experiment table, and `triage evaluate` on runs; plus the extension points (extra loss terms, transforms)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
from typer.testing import CliRunner

from training import losses
from training.config import resolve
from training.experiment import ROWS
from training.oof import read_classifier_oof, read_segmenter_oof
from training.run import RunRequest, fold_runs, train
from training.run_format import read_run_card
from triage.cli.main import app

runner = CliRunner()


def test_cross_validation_covers_every_image_once_out_of_fold(
    tiny_experiment: Path, synth_data: Path
) -> None:
    ids = {r["image_id"] for r in csv.DictReader((synth_data / "metadata.csv").open())}
    cls = [read_classifier_oof(r) for r in fold_runs(tiny_experiment / "classifier")]
    seg = [read_segmenter_oof(r) for r in fold_runs(tiny_experiment / "segmenter")]
    assert len(cls) == len(seg) == 3
    assert sorted(i for c in cls for i in c.ids) == sorted(ids)
    assert sorted(i for s in seg for i in s.ids) == sorted(
        ids
    )  # the positive-only U-Net predicts negatives too
    for run in fold_runs(tiny_experiment / "segmenter"):
        data = json.loads((run / "data.json").read_text())
        assert not set(data["train"]) & set(data["oof"])
        assert data["val"] and not set(data["val"]) & set(data["oof"])  # the scored fold picks no epoch


def test_thresholds_are_written_into_the_cards_export_reads(tiny_experiment: Path) -> None:
    gate_cards = [read_run_card(r).thresholds for r in fold_runs(tiny_experiment / "classifier")]
    seg_cards = [read_run_card(r).thresholds for r in fold_runs(tiny_experiment / "segmenter")]
    assert all(set(c) == {"gate", "chosen_by"} for c in gate_cards)
    assert all(
        set(c) == {"top", "min_area", "bottom", "min_component", "grid", "chosen_by"} for c in seg_cards
    )
    chosen = seg_cards[0]["chosen_by"]
    assert chosen["metric"] == "dice_per_image" and chosen["folds"] == 3 and chosen["images"] == 24
    assert chosen["pair"]["gate"] == gate_cards[0]["gate"] and chosen["pair"]["top"] == seg_cards[0]["top"]
    # the CLI makes the same choice
    result = runner.invoke(
        app,
        [
            "train",
            "thresholds",
            "--classifier",
            str(tiny_experiment / "classifier"),
            "--segmenter",
            str(tiny_experiment / "segmenter"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"gate {gate_cards[0]['gate']}" in result.output
    assert (
        json.loads((tiny_experiment / "segmenter" / "thresholds.json").read_text())["value"]
        == chosen["value"]
    )


def test_experiment_table_has_the_thesis_structure(tiny_experiment: Path) -> None:
    table = json.loads((tiny_experiment / "table.json").read_text())
    for column in ("cascade", "baseline"):
        assert list(table["table"][column]) == list(ROWS)
        for row in ROWS:
            for metric in ("dice_per_image", "dice", "iou"):
                value = table["table"][column][row][metric]
                assert 0.0 <= value["mean"] <= 1.0 and value["std"] >= 0.0
    assert "positive-only U-Net, oracle gate (true labels)" in table["contributions"]
    assert 0.0 <= table["classifier_auc"]["TTA"]["mean"] <= 1.0
    assert table["classifier_drain"]["drain_only_auc"] > 0.5  # the synthetic set's drains follow the label
    paired = json.loads((tiny_experiment / "paired.json").read_text())
    gate = paired["rows"]["TTA + triplet"][
        "cascade − positive-only U-Net without gate (the gate's own contribution)"
    ]
    assert gate["images"] == 24 and gate["ci"][0] <= gate["mean"] <= gate["ci"][1]
    markdown = (tiny_experiment / "table.md").read_text()
    assert "| argmax |" in markdown and "Dice/image one-case" in markdown
    test = json.loads((tiny_experiment / "test.json").read_text())
    assert set(test["cascade"]["strata"]) >= {"size_stratum", "drain", "view", "photometric"}
    assert (tiny_experiment / "test" / "cascade-fold-0" / "overlays.png").is_file()


def test_evaluate_runs_uses_the_cards_thresholds(
    tiny_experiment: Path, synth_test: Path, cache_dir: Path, tmp_path: Path
) -> None:
    cls, seg = tiny_experiment / "classifier" / "fold-0", tiny_experiment / "segmenter" / "fold-0"
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--model",
            str(cls),
            "--model",
            str(seg),
            "--data",
            str(synth_test),
            "--out",
            str(tmp_path / "r"),
            "--bootstrap",
            "20",
            "--cache",
            str(cache_dir),
            "--section",
            "summary",
            "--section",
            "strata",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["model_kind"] == "runs"
    assert report["sections"]["summary"]["thresholds"]["gate"] == read_run_card(cls).thresholds["gate"]
    alone = runner.invoke(
        app,
        [
            "evaluate",
            "--model",
            str(tiny_experiment / "baseline" / "fold-0"),
            "--data",
            str(synth_test),
            "--out",
            str(tmp_path / "b"),
            "--bootstrap",
            "0",
            "--cache",
            str(cache_dir),
            "--section",
            "summary",
        ],
    )
    assert alone.exit_code == 0, alone.output
    summary = json.loads((tmp_path / "b" / "report.json").read_text())["sections"]["summary"]
    assert "classifier" not in summary and set(summary["segmentation"]) == {"none", "oracle"}


def test_extra_loss_terms_and_transforms_plug_into_training(
    synth_data: Path, cache_dir: Path, tmp_path: Path
) -> None:
    seen: list[tuple[str, ...]] = []

    def factory(scale: float) -> losses.LossTerm:
        def term(
            model: torch.nn.Module, batch: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]
        ) -> tuple[torch.Tensor, dict[str, float]]:
            seen.append(tuple(sorted(batch)) + tuple(sorted(outputs)))
            cam = model.cam_from_features(outputs["features"])  # type: ignore[operator]
            lungs = torch.nn.functional.interpolate(batch["lungs"], size=cam.shape[-2:])
            value = scale * (torch.relu(cam) * (1 - lungs)).mean()
            return value, {"outside": float(value.detach())}

        return term

    losses.LOSS_TERMS["outside_lungs"] = factory
    try:
        config = resolve(
            "classifier",
            "tiny",
            overrides=[
                'extra_losses=[{"name": "outside_lungs", "weight": 0.5, "scale": 2.0}]',
                'augment.extra=[{"name": "gaussian_noise", "p": 1.0, "sigma": 0.05}]',
            ],
        )
        train(config, RunRequest(synth_data, tmp_path / "run", 3, 0, cache_dir=cache_dir, progress=False))
    finally:
        del losses.LOSS_TERMS["outside_lungs"]
    assert seen and {"lungs", "heatmap", "mask", "has_lungs", "features", "logit"} <= set(seen[0])
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert float(rows[0]["train_outside_lungs/loss"]) >= 0 and "train_main_loss" in rows[0]
    assert np.isfinite(float(rows[-1]["train_loss"]))
