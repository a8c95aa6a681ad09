"""Adaptive TTA: the margin chosen on validation images changes no gate decision there, the flipped pass
runs only inside it, and probabilities / CAMs inside it are exactly full TTA's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from export.adaptive_tta import adapt, check_held_out, choose_gate_margin, cpu_variants, main
from tests.bundles import build_tiny_bundle
from triage.bundle import CARD, Bundle, load_bundle, seal
from triage.cascade.items import load_item
from triage.cascade.models import CascadeModels
from triage.io.dicom import ReadPolicy
from triage.synth.dataset import SynthRequest, synthesize


def test_margin_is_the_largest_shift_and_changes_nothing() -> None:
    rng = np.random.default_rng(0)
    plain = rng.uniform(0, 1, 500)
    full = np.clip(plain + rng.normal(0, 0.03, 500), 0, 1)
    chosen = choose_gate_margin(plain, full, 0.5)
    assert chosen["gate_margin"] == pytest.approx(np.abs(full - plain).max() + 1e-6)
    adaptive = np.where(np.abs(plain - 0.5) < chosen["gate_margin"], full, plain)
    assert np.array_equal(adaptive >= 0.5, full >= 0.5) and chosen["decisions_changed"] == 0
    assert 0 < chosen["within_margin"] < 500
    with pytest.raises(ValueError, match="equal non-empty"):
        choose_gate_margin(plain, full[:-1], 0.5)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], list[Path]]:
    root = tmp_path_factory.mktemp("adaptive")
    synthesize(SynthRequest(root / "s", studies=40, size=256, seed=3, positive_fraction=0.4), workers=1)
    files = sorted((root / "s").rglob("*.dcm"))
    bundle = build_tiny_bundle(root / "b", cls_size=64, seg_size=64, tta=("none", "hflip"))
    # the gate at the median un-flipped probability of the validation half: decisions on both sides
    b = load_bundle(bundle)
    x = np.stack([load_item(str(f), b, ReadPolicy()).gate_input.x for f in files[:20]])  # type: ignore[union-attr]
    plain, _ = CascadeModels(b, "cpu", 1).gate(x, use_tta=False)
    card = json.loads((bundle / CARD).read_text())
    card["thresholds"]["gate"] = float(np.median(plain))
    (bundle / CARD).write_text(json.dumps(card))
    seal(bundle)
    return bundle, files[:20], files[20:]


def _gate(bundle: Bundle, files: list[Path], adaptive: bool) -> tuple[CascadeModels, np.ndarray, np.ndarray]:
    models = CascadeModels(bundle, "cpu", 1, adaptive=adaptive)
    x = np.stack([load_item(str(f), bundle, ReadPolicy()).gate_input.x for f in files])  # type: ignore[union-attr]
    prob, cam = models.gate(x, use_tta=True)
    assert cam is not None
    return models, prob, cam


def test_adaptive_tta_on_validation_and_held_out(data: tuple[Path, list[Path], list[Path]]) -> None:
    root, validation, held_out = data
    block = adapt(root, [str(p) for p in validation])
    bundle = load_bundle(root)  # resealed: the hash check passes
    assert bundle.adaptive_tta is not None and bundle.adaptive_tta.gate_margin == block["gate_margin"] > 0
    assert (
        bundle.adaptive_tta.chosen_by["images"] == 20
        and bundle.adaptive_tta.chosen_by["decisions_changed"] == 0
    )
    gate, margin = bundle.thresholds.gate, bundle.adaptive_tta.gate_margin
    for files in (validation, held_out):
        _, p_full, cam_full = _gate(bundle, files, adaptive=False)
        models, p_fast, cam_fast = _gate(bundle, files, adaptive=True)
        plain = _gate_plain(bundle, files)
        inside = np.abs(plain - gate) < margin
        assert models.tta_counts == {"images": len(files), "full_tta": int(inside.sum())}
        np.testing.assert_allclose(p_fast[inside], p_full[inside], atol=1e-6)  # full TTA inside the margin
        np.testing.assert_allclose(cam_fast[inside], cam_full[inside], atol=1e-6)
        np.testing.assert_allclose(p_fast[~inside], plain[~inside], atol=1e-6)  # un-flipped outside
        changed = int(np.sum((p_fast >= gate) != (p_full >= gate)))
        if files is validation:
            assert changed == 0 and 0 < inside.sum() < len(files)
        else:  # not guaranteed by construction; on these images TTA's shift stays inside the margin
            assert changed <= 1, changed
            checked = check_held_out(root, [str(p) for p in files], threads=1, batch=3)
            fp32 = checked["fp32"]
            assert fp32["images"] == len(files) and fp32["within_margin"] == int(inside.sum())
            assert fp32["decisions_changed"] == changed
            assert fp32["max_shift"] == pytest.approx(float(np.abs(p_full - plain).max()), abs=1e-6)


def _gate_plain(bundle: Bundle, files: list[Path]) -> np.ndarray:
    x = np.stack([load_item(str(f), bundle, ReadPolicy()).gate_input.x for f in files])  # type: ignore[union-attr]
    prob, _ = CascadeModels(bundle, "cpu", 1, adaptive=False).gate(x, use_tta=False)
    return prob


def test_one_margin_covers_every_cpu_variant(
    tmp_path: Path, data: tuple[Path, list[Path], list[Path]]
) -> None:
    """A second CPU variant (here: another network, as an INT8 graph would be) with larger TTA shifts
    widens the margin, so that neither variant changes a validation decision; TensorRT is not a CPU one."""
    _, validation, _ = data
    root = build_tiny_bundle(tmp_path / "b", cls_size=64, seg_size=64, tta=("none", "hflip"))
    other = build_tiny_bundle(tmp_path / "other", cls_size=64, seg_size=64, seed=5, tta=("none", "hflip"))
    shutil.copy(other / "classifier.onnx", root / "classifier.other.onnx")
    card = json.loads((root / CARD).read_text())
    card["models"]["classifier"]["variants"] = {
        "int8": {"file": "classifier.other.onnx", "runtime": "onnx", "precision": "int8"},
        "tensorrt-fp16": {"file": "classifier.other.onnx", "runtime": "tensorrt", "precision": "fp16"},
    }
    card["models"]["segmenter"]["variants"] = {
        "int8": {"file": "segmenter.onnx", "runtime": "onnx", "precision": "int8"},
        "tensorrt-fp16": {"file": "segmenter.onnx", "runtime": "tensorrt", "precision": "fp16"},
    }
    (root / CARD).write_text(json.dumps(card))
    seal(root)
    assert cpu_variants(load_bundle(root)) == ["fp32", "int8"]
    block = adapt(root, [str(p) for p in validation])
    bundle = load_bundle(root)
    shifts = {}
    for variant in ("fp32", "int8"):
        x = np.stack([load_item(str(f), bundle, ReadPolicy()).gate_input.x for f in validation])  # type: ignore[union-attr]
        models = CascadeModels(bundle, "cpu", 1, variant=variant, adaptive=False)
        plain, full = models.gate(x, use_tta=False)[0], models.gate(x, use_tta=True)[0]
        shifts[variant] = float(np.abs(full - plain).max())
        adaptive = np.where(np.abs(plain - bundle.thresholds.gate) < block["gate_margin"], full, plain)
        assert np.array_equal(adaptive >= bundle.thresholds.gate, full >= bundle.thresholds.gate)
    assert shifts["int8"] > shifts["fp32"]  # the other network shifts more: the fp32 shift alone is too small
    assert block["gate_margin"] == pytest.approx(max(shifts.values()) + 1e-6, abs=1e-7)
    assert block["chosen_by"]["variants"] == ["fp32", "int8"]


def test_held_out_check_needs_a_margin(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = build_tiny_bundle(tmp_path / "b", tta=("none", "hflip"))
    synthesize(SynthRequest(tmp_path / "s", studies=2, size=256, seed=1), workers=1)
    assert main([str(bundle), "--held-out", str(tmp_path / "s")]) == 2
    assert "has no adaptive_tta margin" in capsys.readouterr().err


def test_cli_refuses_a_bundle_without_flip_tta(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = build_tiny_bundle(tmp_path / "b", tta=("none",))
    synthesize(SynthRequest(tmp_path / "s", studies=2, size=256, seed=1), workers=1)
    assert main([str(bundle), "--validation", str(tmp_path / "s")]) == 2
    assert "adaptive TTA needs ['none', ...]" in capsys.readouterr().err
