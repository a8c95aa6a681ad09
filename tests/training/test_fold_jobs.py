"""`--jobs N`: the fold runs of a cross-validation trained side by side give the runs trained one after
another (same splits, same losses and out-of-fold predictions up to float reduction order); asking for
more jobs than the machine has, or jobs without --fold all, is a one-line error."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from training.oof import read_classifier_oof
from triage.cli.main import app
from triage.system import usable_cores

runner = CliRunner()


def _train(data: Path, out: Path, cache: Path, *extra: str) -> object:
    args = ["train", "classifier", "--data", str(data), "--out", str(out), "--preset", "tiny"]
    return runner.invoke(app, [*args, "--folds", "3", "--cache", str(cache), "--quiet", *extra])


def _losses(run: Path) -> list[float]:
    with (run / "metrics.csv").open() as f:
        return [float(r["train_loss"]) for r in csv.DictReader(f)]


@pytest.mark.skipif(usable_cores() < 2, reason="--jobs 2 needs two usable cores")
def test_folds_side_by_side_equal_folds_one_after_another(
    synth_data: Path, cache_dir: Path, tmp_path: Path
) -> None:
    one = _train(synth_data, tmp_path / "one", cache_dir, "--fold", "all")
    assert one.exit_code == 0, one.output  # type: ignore[attr-defined]
    two = _train(synth_data, tmp_path / "two", cache_dir, "--fold", "all", "--jobs", "2")
    assert two.exit_code == 0, two.output  # type: ignore[attr-defined]
    for k in range(3):
        a, b = tmp_path / "one" / f"fold-{k}", tmp_path / "two" / f"fold-{k}"
        data_a, data_b = (json.loads((r / "data.json").read_text()) for r in (a, b))
        assert {key: data_a[key] for key in ("train", "val", "oof")} == {
            key: data_b[key] for key in ("train", "val", "oof")
        }
        np.testing.assert_allclose(_losses(a), _losses(b), rtol=1e-3)
        oof_a, oof_b = read_classifier_oof(a), read_classifier_oof(b)
        assert oof_a.ids == oof_b.ids
        np.testing.assert_allclose(oof_a.probability_tta, oof_b.probability_tta, atol=1e-3)
    assert json.loads((tmp_path / "two" / "cv.json").read_text())["runs"] == ["fold-0", "fold-1", "fold-2"]


def test_jobs_beyond_the_machine_or_without_fold_all_are_one_line_errors(
    synth_data: Path, cache_dir: Path, tmp_path: Path
) -> None:
    cores = usable_cores()
    cases = [
        (["--fold", "all", "--jobs", str(cores + 1)], f"is more than the {cores} CPU core(s)"),
        (["--fold", "0", "--jobs", "2"], "use it with --fold all"),
    ]
    for extra, expected in cases:
        result = _train(synth_data, tmp_path / "x", cache_dir, *extra)
        assert result.exit_code == 2, extra  # type: ignore[attr-defined]
        output = result.output  # type: ignore[attr-defined]
        assert expected in output and len(output.strip().splitlines()) == 1, output
    assert not (tmp_path / "x").exists()
