"""INT8 CPU variants: calibrated on DICOMs through the runtime's code, parity-checked, timed, and chosen as
the CPU default only where they pay; the runtime runs either variant on request."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from export.errors import ExportError
from export.parity import TOLERANCES
from export.pipeline import ExportOptions, export_bundle
from tests.export.conftest import Exported
from triage.bundle import load_bundle, select_variant
from triage.cascade.models import CascadeModels
from triage.cascade.predict import PredictOptions, Predictor
from triage.errors import TriageError


def test_card_records_int8_parity_speed_and_the_default(exported: Exported) -> None:
    for role in ("classifier", "segmenter"):
        entry = exported.card["models"][role]  # type: ignore[index]
        int8 = entry["variants"]["int8"]
        assert int8["precision"] == "int8" and int8["quantization"]["format"] == "QDQ"
        assert int8["parity"]["passed"] and int8["parity"]["tolerance"] == TOLERANCES["int8"]
        assert 0 < int8["parity"]["max_abs_diff"]["probability"] <= TOLERANCES["int8"]["probability"]
        assert int8["quantization"]["quantised_nodes"] > 0  # an INT8 graph, not the FP32 one renamed
        speed = int8["speed"]
        assert speed["fp32_ms_per_image"] > 0 and speed["int8_ms_per_image"] > 0
        figs = int8["parity"]
        changed = figs.get("gate_mismatches", figs.get("mask_decision_mismatches"))
        expected = "int8" if speed["speedup"] >= 1.2 and changed <= 0.005 * figs["images"] else "fp32"
        assert entry["default_variant"]["cpu"] == expected, int8["default_because"]
    calibration = exported.card["provenance"]["exported"]["calibration"]  # type: ignore[index]
    assert calibration["kind"] == "folder" and calibration["images"] == 8


def test_runtime_picks_the_cards_default_or_the_named_variant(exported: Exported, tmp_path: Path) -> None:
    b = exported.bundle
    auto = CascadeModels(b, "cpu", 1)
    assert auto.variants["classifier"] == b.classifier.default_variant["cpu"]
    for variant in ("fp32", "int8"):
        out = tmp_path / variant
        summary = Predictor(
            b, PredictOptions(formats=frozenset({"seg"}), device="cpu", threads=1, variant=variant)
        ).run([str(exported.validation)], out)
        assert summary.failed == 0 and len(summary.records) == 12
        assert all(
            json.loads(line)["status"] == "ok" for line in (out / "results.jsonl").read_text().splitlines()
        )
    with pytest.raises(TriageError, match=r"no variant 'fp16'; it has \['fp32', 'int8'\]"):
        select_variant(b.classifier, "fp16", "cpu")


def test_a_model_no_int8_recipe_passes_stays_fp32_and_the_card_says_why(
    exported: Exported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a tolerance no quantised graph meets: every recipe of the ladder fails for both models
    monkeypatch.setitem(TOLERANCES, "int8", {"probability": 0.0, "map": 0.0, "decisions": "reported"})
    steps: list[str] = []
    opts = ExportOptions(
        out=tmp_path / "b",
        validation=exported.validation,
        thresholds_file=exported.thresholds,
        int8=True,
        calibration=exported.root / "calibration" / "dicom-images-train",
        on_step=steps.append,
    )
    card = export_bundle(list(exported.runs), opts)
    for role in ("classifier", "segmenter"):
        entry = card["models"][role]
        assert "int8" not in entry.get("variants", {})
        refused = entry["int8_refused"]
        assert len(refused["tried"]) == 5  # one reason per recipe of the ladder
        assert all("parity check failed" in t or "not an INT8 one" in t for t in refused["tried"])
        assert any(f"INT8 refused for the {role}" in s for s in steps)
    assert not list((tmp_path / "b").glob("*int8*"))
    bundle = load_bundle(tmp_path / "b")  # sealed and verified without the dropped files
    assert CascadeModels(bundle, "cpu", 1).variants == {"classifier": "fp32", "segmenter": "fp32"}
    forced = ExportOptions(**{**opts.__dict__, "out": tmp_path / "forced", "int8_default": "int8"})
    with pytest.raises(ExportError, match="no INT8 recipe passed the parity check for classifier, segmenter"):
        export_bundle(list(exported.runs), forced)
    assert not (tmp_path / "forced").exists()
