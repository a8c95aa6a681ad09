"""`triage train`: tiny runs of the three roles on CPU, the run folder export reads, resume after an
interruption, label problems, and one-line errors."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from training.config import read_config, resolve
from training.engine import Interrupted, Trainer
from training.models import build_model
from training.oof import read_classifier_oof, read_segmenter_oof
from training.run import RunRequest, train
from training.run_format import read_run_card
from triage.cli.main import app
from triage.data import folder

runner = CliRunner()


def _train(role: str, data: Path, out: Path, cache: Path, *extra: str) -> object:
    args = [
        "train",
        role,
        "--data",
        str(data),
        "--out",
        str(out),
        "--preset",
        "tiny",
        "--folds",
        "3",
        "--cache",
        str(cache),
        "--quiet",
        *extra,
    ]
    return runner.invoke(app, args)


@pytest.mark.parametrize("role", ["classifier", "segmenter", "baseline"])
def test_tiny_run_writes_the_run_folder_export_reads(
    role: str, synth_data: Path, cache_dir: Path, tmp_path: Path
) -> None:
    run = tmp_path / role
    result = _train(role, synth_data, run, cache_dir, "--fold", "1")
    assert result.exit_code == 0, result.output
    card = read_run_card(run)
    assert card.role == role and card.input_size == (64, 64) and card.checkpoint == "best.safetensors"
    assert card.provenance["fold"] == 1 and card.provenance["folds"] == 3 and card.provenance["epochs"] == 2
    model = build_model(card.arch)
    model.load_state_dict(load_file(str(run / card.checkpoint)))  # the weights fit the card's arch
    assert read_config(run / "config.yaml") == resolve(role, "tiny")
    with (run / "metrics.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 2
    assert any((run / "tb").iterdir())
    assert not (run / "state.pt").exists()  # finished runs keep no resume state
    data = json.loads((run / "data.json").read_text())
    meta = {r["image_id"]: r for r in csv.DictReader((synth_data / "metadata.csv").open())}
    train_labels = {meta[i]["label"] for i in data["train"]}
    assert train_labels == ({"1"} if role == "segmenter" else {"0", "1"})  # positives only for the segmenter
    assert not set(data["train"]) & set(data["oof"])
    if role == "classifier":
        oof = read_classifier_oof(run)
        assert oof.ids == data["oof"] and np.all((oof.probability > 0) & (oof.probability < 1))
    else:
        seg = read_segmenter_oof(run)
        assert seg.ids == data["oof"]  # every held-out image, negatives too
        assert seg.seg.shape == (len(seg.ids), 64, 64) and seg.seg.dtype == np.float16
        assert seg.truth.sum() > 0


def _tiny(role: str, **over: object) -> object:
    return resolve(role, "tiny", overrides=[f"{k}={v}" for k, v in over.items()])


def test_interrupted_run_resumes_to_the_same_weights(
    synth_data: Path, cache_dir: Path, tmp_path: Path
) -> None:
    config = _tiny("classifier", batch_size=4, epochs=3)

    def request(out: Path, resume: bool = False) -> RunRequest:
        return RunRequest(
            synth_data, out, folds=3, fold=0, resume=resume, cache_dir=cache_dir, progress=False
        )

    train(config, request(tmp_path / "straight"))  # type: ignore[arg-type]

    def stop(trainer: Trainer, epoch: int, step: int) -> None:
        if (epoch, step) == (1, 2):  # what `kill PID` does: the loop stops after this batch
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Interrupted) as info:
        train(config, request(tmp_path / "stopped"), hooks=[stop])  # type: ignore[arg-type]
    assert (info.value.epoch, info.value.step) == (1, 2)
    state = torch.load(tmp_path / "stopped" / "state.pt", weights_only=True)  # no pickled objects
    assert (state["epoch"], state["step"]) == (1, 2)
    again = runner.invoke(
        app,
        [
            "train",
            "classifier",
            "--data",
            str(synth_data),
            "--out",
            str(tmp_path / "stopped"),
            "--preset",
            "tiny",
            "--folds",
            "3",
            "--fold",
            "0",
            "--cache",
            str(cache_dir),
            "--quiet",
        ],
    )
    assert again.exit_code == 2 and "--resume" in again.output  # never overwrites by accident
    train(config, request(tmp_path / "stopped", resume=True))  # type: ignore[arg-type]
    a = load_file(str(tmp_path / "straight" / "last.safetensors"))
    b = load_file(str(tmp_path / "stopped" / "last.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    history = list(csv.DictReader((tmp_path / "stopped" / "metrics.csv").open()))
    assert [row["epoch"] for row in history] == ["1", "2", "3"]


def test_label_problems_are_reported_before_training_and_can_be_dropped(
    synth_data: Path, cache_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "bad"
    shutil.copytree(synth_data, data)
    csv_path = data / "train-rle.csv"
    lines = csv_path.read_text().splitlines()
    csv_path.write_text(
        "\n".join([*lines[:-1], "9.9.9.9, -1"]) + "\n"
    )  # one image loses its row, one row has no image
    out = tmp_path / "run"
    result = _train("classifier", data, out, cache_dir)
    assert result.exit_code == 2
    message = result.output.strip().splitlines()[-1]
    assert "2 label problem(s) (no_image: 1, no_label: 1)" in message and "--drop-bad-labels" in message
    with (out / "label_problems.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {(r["image_id"], r["problem"]) for r in rows} >= {("9.9.9.9", "no_image")}
    assert not (out / "model.json").exists()
    result = _train("classifier", data, tmp_path / "run2", cache_dir, "--drop-bad-labels")
    assert result.exit_code == 0, result.output
    assert read_run_card(tmp_path / "run2").provenance["dropped_images"] == 2


def test_bad_requests_are_one_line_errors(synth_data: Path, cache_dir: Path, tmp_path: Path) -> None:
    cases = [
        (["--fold", "7"], "--fold 7 is out of range for --folds 3; valid: 0..2, all, or full"),
        (["--fold", "x"], "--fold must be 0..2, all or full"),
        (["--set", "loss=dice"], "loss must be one of ['soft_f1', 'bce', 'focal']"),
        (["--set", "augment.spin=1"], "unknown config key 'augment.spin'"),
    ]
    for extra, expected in cases:
        result = _train("classifier", synth_data, tmp_path / "x", cache_dir, *extra)
        assert result.exit_code == 2, extra
        assert expected in result.output and len(result.output.strip().splitlines()) == 1, result.output
    result = runner.invoke(
        app,
        [
            "train",
            "classifier",
            "--data",
            str(synth_data),
            "--out",
            str(tmp_path / "y"),
            "--preset",
            "tiny",
            "--folds",
            "1",
            "--cache",
            str(cache_dir),
            "--quiet",
        ],
    )
    assert result.exit_code == 2 and "'--folds': Input should be greater than or equal to 2" in result.output


def test_segmenter_without_positive_images_is_a_one_line_error(cache_dir: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(6):
        folder.write_item(
            tmp_path / "neg", f"n{i}", rng.uniform(0, 1, (128, 128)), np.zeros((128, 128), bool)
        )
    result = _train("segmenter", tmp_path / "neg", tmp_path / "run", cache_dir, "--fold", "full")
    assert result.exit_code == 2
    assert "no positive images" in result.output and "positive images only" in result.output


def test_full_fold_trains_on_every_image_without_validation(
    synth_data: Path, cache_dir: Path, tmp_path: Path
) -> None:
    result = _train("baseline", synth_data, tmp_path / "full", cache_dir, "--fold", "full")
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "full" / "data.json").read_text())
    assert len(data["train"]) == 24 and data["val"] == [] and data["fold"] == "full"
    assert (tmp_path / "full" / "best.safetensors").is_file() and not (tmp_path / "full" / "oof").exists()
