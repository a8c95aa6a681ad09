"""The positive control / drain experiment (training/saliency/control.py): its setup refuses what the
protocol forbids, its phantoms plant the confounder as documented, and one tiny run writes the raw
per-model rows and the tables, and resumes without retraining."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.saliency.control import EASY, ControlSetup, phantom_configs, run
from training.saliency.control_report import read_rows


def test_the_setup_refuses_a_coarse_grid_and_unknown_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="8x8"):
        ControlSetup(tmp_path, input_size=32, stride=8)
    with pytest.raises(ValueError, match="--experiment"):
        ControlSetup(tmp_path, experiment="tube")
    with pytest.raises(ValueError, match="--phantom"):
        ControlSetup(tmp_path, phantom="hard")
    with pytest.raises(ValueError, match="--lambdas"):
        ControlSetup(tmp_path, lambdas=(0.0,))


def test_arms_per_region_and_lambda(tmp_path: Path) -> None:
    marker = ControlSetup(tmp_path, lambdas=(1.0, 3.0))
    assert marker.arm_names() == ["ce", "lungs@1", "lungs@3"]
    drain = ControlSetup(tmp_path, experiment="drain", lambdas=(1.0,))
    assert drain.arm_names() == ["ce", "lungs@1", "lungs-drain@1"]
    assert ControlSetup(tmp_path, arms=("ce",)).arm_names() == ["ce"]


@pytest.mark.parametrize("phantom", ["default", "easy"])
def test_the_confounder_is_correlated_in_training_and_not_in_test(phantom: str) -> None:
    marker = phantom_configs("marker", phantom)
    assert marker["train"].corner_marker_given_positive == 0.9
    assert marker["train"].corner_marker_given_negative == 0.1
    assert marker["test"].corner_marker_given_positive == marker["test"].corner_marker_given_negative == 0.5
    assert marker["train"].drain_given_positive == marker["train"].drain_given_negative == 0.0
    drain = phantom_configs("drain", phantom)
    assert (drain["train"].drain_given_positive, drain["train"].drain_given_negative) == (0.9, 0.1)
    assert drain["test"].drain_given_positive == drain["test"].drain_given_negative == 0.5
    easy = phantom == "easy"
    assert (marker["train"].ptx_lucency == EASY["ptx_lucency"]) is easy


def test_a_tiny_run_writes_models_and_tables_and_resumes(tmp_path: Path, cache_dir: Path) -> None:
    setup = ControlSetup(
        tmp_path / "exp",
        seeds=1,
        lambdas=(1.0,),
        train_studies=12,
        val_studies=6,
        test_studies=12,
        epochs=1,
        warmup_epochs=0,
        ramp_epochs=0,
        occlusion_images=4,
        cache=cache_dir,
    )
    result = run(setup)
    rows = read_rows(setup.out / "models.csv")
    assert [r["arm"] for r in rows] == ["ce", "lungs@1"]
    assert rows[0]["term_curve"] == "" and rows[1]["term_curve"] != ""
    ref = result["reference"]["cam/confounder"]
    assert 0.0 <= ref["floor"] <= ref["chance"] < ref["ceiling"] <= 1.0
    assert "lungs@1" in result["comparison"]
    assert json.loads((setup.out / "results.json").read_text())["sets"]["test"]["images"] == 12
    assert "mass on the confounder" in (setup.out / "results.md").read_text()
    before = (setup.out / "models.csv").read_text()
    run(setup)  # everything is done: no model is trained again
    assert (setup.out / "models.csv").read_text() == before
