"""INT8 CPU variants: calibrated on DICOMs through the runtime's code, parity-checked, timed, and chosen as
the CPU default only where they pay; the runtime runs either variant on request."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from export.parity import TOLERANCES
from tests.export.conftest import Exported
from triage.bundle import select_variant
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
        speed = int8["speed"]
        assert speed["fp32_ms_per_image"] > 0 and speed["int8_ms_per_image"] > 0
        expected = "int8" if speed["speedup"] >= 1.2 else "fp32"
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
