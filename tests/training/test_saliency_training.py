"""Training with the saliency hooks, tiny presets on a tiny synthetic set: the heatmap loss in
`triage train classifier`, `--corruption-augment`, `triage train saliency` with each target kind, and the
bad inputs that must stop training before it starts with a one-line error."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.config import resolve
from training.run import RunRequest, train
from training.saliency.targets import TargetError
from training.saliency.task import TargetSpec
from training.saliency.terms import DataCheckError
from training.saliency.train import train_saliency
from triage.data.folder import write_item
from triage.synth.dataset import SynthRequest, read_metadata, synthesize

HEATMAP = {"name": "heatmap", "weight": 1.0, "method": "hirescam"}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("salsynth") / "set"
    synthesize(SynthRequest(root, studies=16, positive_fraction=0.5, size=128, seed=3), workers=1)
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "triage.cli.main", *args], capture_output=True, text=True, check=False
    )


def test_classifier_trains_with_the_heatmap_loss_and_corruptions(
    data: Path, cache: Path, tmp_path: Path
) -> None:
    cfg = resolve(
        "classifier",
        "tiny",
        None,
        [],
        loss="bce",
        epochs=1,
        extra_losses=(HEATMAP,),
        augment={"extra": [{"name": "corruption", "p": 0.5}]},
    )
    (run,) = train(cfg, RunRequest(data, tmp_path / "run", fold="full", cache_dir=cache, progress=False))
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert float(rows[-1]["train_heatmap/heatmap_term"]) >= 0
    assert 0 <= float(rows[-1]["train_heatmap/heatmap_inside"]) <= 1
    assert (run / "model.json").is_file()


def test_heatmap_loss_without_lung_masks_stops_before_training(cache: Path, tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    rng = np.random.default_rng(0)
    for i in range(6):
        mask = np.zeros((64, 64), bool)
        if i % 2:
            mask[10:20, 10:20] = True
        write_item(folder, f"img{i}", rng.random((64, 64)).astype(np.float32), mask)
    cfg = resolve("classifier", "tiny", None, [], loss="bce", epochs=1, extra_losses=(HEATMAP,))
    with pytest.raises(DataCheckError, match=r"needs lung-field masks, but .* has none") as info:
        train(cfg, RunRequest(folder, tmp_path / "run", fold="full", cache_dir=cache, progress=False))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run" / "metrics.csv").exists()


def test_empty_or_wrong_size_lung_masks_are_refused(data: Path, cache: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(data, copy)
    rows = read_metadata(copy)
    lungs = copy / rows[0]["lungs"]
    Image.fromarray(np.zeros((128, 128), np.uint8)).save(lungs)
    cfg = resolve("classifier", "tiny", None, [], loss="bce", epochs=1, extra_losses=(HEATMAP,))
    with pytest.raises(DataCheckError, match=r"1 of 16 training images have an all-empty lung mask"):
        train(cfg, RunRequest(copy, tmp_path / "run", fold="full", cache_dir=cache, progress=False))
    Image.fromarray(np.full((100, 128), 255, np.uint8)).save(lungs)
    with pytest.raises(ValueError, match="lungs_size"):
        train(cfg, RunRequest(copy, tmp_path / "run2", fold="full", cache_dir=cache, progress=False))


def test_cli_flags_and_their_errors(data: Path, cache: Path, tmp_path: Path) -> None:
    bad_layer = _cli(
        "train",
        "classifier",
        "--data",
        str(data),
        "--out",
        str(tmp_path / "r"),
        "--preset",
        "tiny",
        "--fold",
        "full",
        "--heatmap-loss",
        "hirescam",
        "--heatmap-layer",
        "backbone.layer9",
        "--cache",
        str(cache),
        "--quiet",
    )
    assert bad_layer.returncode == 2
    err = bad_layer.stderr.strip().splitlines()
    assert len(err) == 1 and "unknown layer 'backbone.layer9'; valid layers: " in err[0]
    assert "backbone.layer4" in err[0]
    bad_method = _cli(
        "train",
        "classifier",
        "--data",
        str(data),
        "--out",
        str(tmp_path / "r"),
        "--preset",
        "tiny",
        "--heatmap-loss",
        "occlusion",
    )
    assert bad_method.returncode == 2 and bad_method.stderr.strip().splitlines() == [
        "triage train classifier: error: Invalid value for '--heatmap-loss': 'occlusion' is not one of "
        "'hirescam', 'gradcam'. (see triage train classifier --help)"
    ]
    seg = _cli(
        "train",
        "segmenter",
        "--data",
        str(data),
        "--out",
        str(tmp_path / "r"),
        "--preset",
        "tiny",
        "--heatmap-loss",
        "hirescam",
    )
    assert seg.returncode == 2 and "not available for segmenter" in seg.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("kind", "loss"), [("heatmap", "kl"), ("lesion", "bce")])
def test_saliency_unet_trains_against_targets(
    data: Path, cache: Path, tmp_path: Path, kind: str, loss: str
) -> None:
    term = {"name": "saliency_map", "weight": 1.0, "kind": loss, "alpha": 0.5}
    cfg = resolve("saliency", "tiny", None, [], epochs=1, freeze_epochs=1, extra_losses=(term,))
    run = train_saliency(
        cfg,
        RunRequest(data, tmp_path / "run", fold="0", folds=4, cache_dir=cache, progress=False),
        TargetSpec(kind, 20.0),
    )  # type: ignore[arg-type]
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [r["frozen"] for r in rows] == ["1", "0"]  # staged: encoder frozen first
    assert all(np.isfinite(float(r["map_kl"])) for r in rows)
    card = json.loads((run / "model.json").read_text())
    assert card["role"] == "saliency"
    assert card["provenance"]["map_activation"] == ("spatial_softmax" if loss == "kl" else "sigmoid")


def test_saliency_from_an_eye_gaze_csv(data: Path, cache: Path, tmp_path: Path) -> None:
    ids = [r["image_id"] for r in read_metadata(data)]
    gaze = tmp_path / "gaze.csv"
    lines = ["image_id,x,y,weight"] + [f"{i},{30 + k},{40 + k},1.5" for k, i in enumerate(ids[:10])]
    gaze.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = resolve("saliency", "tiny", None, [], epochs=1)
    run = train_saliency(
        cfg,
        RunRequest(data, tmp_path / "run", fold="full", cache_dir=cache, progress=False),
        TargetSpec("gaze", 10.0),
        gaze,
    )
    record = json.loads((run / "data.json").read_text())
    assert record["target"]["images_with_target"] == 10
    outside = tmp_path / "outside.csv"
    outside.write_text(f"image_id,x,y\n{ids[0]},130,5\n", encoding="utf-8")
    with pytest.raises(TargetError, match=r"line 2: fixation \(x=130, y=5\) .* outside its 128x128 image"):
        train_saliency(
            cfg,
            RunRequest(data, tmp_path / "run2", fold="full", cache_dir=cache, progress=False),
            TargetSpec("gaze", 10.0),
            outside,
        )
    assert not (tmp_path / "run2" / "metrics.csv").exists()
