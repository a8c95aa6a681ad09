"""Bad input to `triage export`: a one-line error naming the model and the figure, and nothing left in --out
(nor a temporary folder beside it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import export.steps as steps
from export.errors import ExportError
from export.pipeline import ExportOptions, export_bundle
from tests.export.conftest import Exported
from tests.export.runs import make_pair, make_run
from triage.cli.main import app


def _fails(runs: list[Path], opts: ExportOptions, match: str) -> str:
    with pytest.raises(ExportError, match=match) as info:
        export_bundle(runs, opts)
    assert not opts.out.exists(), "a failed export left --out behind"
    assert [p.name for p in opts.out.parent.iterdir() if p.name.startswith(f".{opts.out.name}")] == []
    message = str(info.value)
    assert "\n" not in message
    return message


def test_run_without_checkpoint(tmp_path: Path) -> None:
    cls = make_run(tmp_path / "cls", "classifier", checkpoint=False, thresholds={"gate": 0.5})
    seg = make_run(tmp_path / "seg", "segmenter")
    _fails(
        [cls, seg],
        ExportOptions(out=tmp_path / "b", default_thresholds=True),
        r"classifier run .*cls has no checkpoint best\.safetensors",
    )


def test_mismatched_input_channels(tmp_path: Path) -> None:
    cls = make_run(tmp_path / "cls", "classifier", channels=1)
    seg = make_run(tmp_path / "seg", "segmenter", channels=3)
    _fails(
        [cls, seg],
        ExportOptions(out=tmp_path / "b", default_thresholds=True),
        r"mismatched input channels: the classifier .* takes 1, the segmenter .* takes 3",
    )


def test_checkpoint_that_does_not_fit_the_card(tmp_path: Path) -> None:
    cls = make_run(tmp_path / "cls", "classifier")
    make_run(tmp_path / "other", "classifier", channels=3)
    (tmp_path / "other" / "best.safetensors").replace(cls / "best.safetensors")
    seg = make_run(tmp_path / "seg", "segmenter")
    _fails(
        [cls, seg],
        ExportOptions(out=tmp_path / "b", default_thresholds=True),
        r"classifier run .* does not fit the architecture in model\.json: .* has shape \(\d+, 3,",
    )


def test_calibration_folder_without_readable_images(tmp_path: Path, exported: Exported) -> None:
    junk = tmp_path / "calib"
    junk.mkdir()
    (junk / "a.dcm").write_bytes(b"not a dicom file")
    (junk / "notes.txt").write_text("hello")
    opts = ExportOptions(
        out=tmp_path / "b",
        int8=True,
        calibration=junk,
        validation=exported.validation,
        thresholds_file=exported.thresholds,
    )
    message = _fails(list(exported.runs), opts, r"calibration folder .*: no readable radiograph among 2 file")
    assert "not_dicom" in message


def test_parity_outside_tolerance_names_the_model_and_the_figure(
    tmp_path: Path, exported: Exported, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A graph that does not compute what the trained network computes (here: the reference side shifted)."""
    real = steps.torch_models

    def shifted(bundle, runs):  # type: ignore[no-untyped-def]
        models = real(bundle, runs)
        segmenter = models.segmenter

        class Shifted:
            provider = "shifted"

            def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
                return {"probability": segmenter(batch)["probability"] * 0.98}

        models.segmenter = Shifted()  # type: ignore[assignment]
        return models

    monkeypatch.setattr(steps, "torch_models", shifted)
    opts = ExportOptions(
        out=tmp_path / "b", validation=exported.validation, thresholds_file=exported.thresholds
    )
    _fails(
        list(exported.runs),
        opts,
        r"parity check failed for the segmenter \(fp32, 12 validation images\): "
        r"max \|Δ probability\| = [\d.e-]+ > 0\.0001",
    )


def test_missing_thresholds_need_an_explicit_choice(tmp_path: Path) -> None:
    cls, seg = make_pair(tmp_path / "runs", triplet=False)
    message = _fails([cls, seg], ExportOptions(out=tmp_path / "b"), r"no value for threshold\(s\)")
    assert "['top', 'min_area', 'bottom', 'min_component']" in message and "--default-thresholds" in message


def test_defaults_are_recorded_as_such(tmp_path: Path, exported: Exported) -> None:
    cls, seg = make_pair(tmp_path / "runs", triplet=False)
    card = export_bundle(
        [cls, seg], ExportOptions(out=tmp_path / "b", default_thresholds=True, validation=exported.validation)
    )
    th = card["thresholds"]
    assert th["gate"] == 0.5 and th["chosen_by"]["gate"]["source"].endswith("model.json")
    assert th["min_area"] == 8 and th["top"] == 0.75  # 2000 px at 1024² scaled to the 64² grid
    assert th["chosen_by"]["top"]["source"].startswith("documented default")


def test_existing_out_and_cli_exit_status(tmp_path: Path, exported: Exported) -> None:
    (tmp_path / "b").mkdir()
    result = CliRunner().invoke(app, ["export", *map(str, exported.runs), "--out", str(tmp_path / "b")])
    assert result.exit_code == 2
    assert "triage export: error: --out" in result.output and "--force" in result.output
    result = CliRunner().invoke(app, ["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "c")])
    assert result.exit_code == 2 and "not a training run folder" in result.output
