"""The model bundle: self-describing, verified at load, with errors a user can act on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.bundles import build_tiny_bundle
from triage.bundle import load_bundle, seal
from triage.errors import ErrorCode, TriageError


@pytest.fixture()
def bundle_dir(tmp_path: Path) -> Path:
    return build_tiny_bundle(tmp_path / "b", gate=0.4, with_saliency=True)


def test_card_drives_everything(bundle_dir: Path) -> None:
    b = load_bundle(bundle_dir)
    assert b.classifier.input_size == (64, 64) and b.segmenter.input_size == (64, 64)
    assert b.thresholds.gate == 0.4 and b.tta == ("none", "hflip")
    assert b.saliency is not None and b.saliency.outputs == {"map": "map"}
    assert b.label.startswith("tiny-test@0.0.1#") and len(b.label.split("#")[1]) == 8


def _code(root: Path) -> ErrorCode:
    with pytest.raises(TriageError) as info:
        load_bundle(root)
    return info.value.code


def test_changed_model_file_fails_its_hash(bundle_dir: Path) -> None:
    path = bundle_dir / "segmenter.onnx"
    path.write_bytes(path.read_bytes() + b"\0")
    assert _code(bundle_dir) == ErrorCode.BUNDLE_HASH_MISMATCH


def test_edited_threshold_fails_the_content_hash_until_resealed(bundle_dir: Path) -> None:
    card = json.loads((bundle_dir / "card.json").read_text())
    card["thresholds"]["gate"] = 0.01
    (bundle_dir / "card.json").write_text(json.dumps(card))
    assert _code(bundle_dir) == ErrorCode.BUNDLE_HASH_MISMATCH
    seal(bundle_dir)
    assert load_bundle(bundle_dir).thresholds.gate == 0.01


def test_missing_and_corrupt_bundles(tmp_path: Path, bundle_dir: Path) -> None:
    assert _code(tmp_path / "nowhere") == ErrorCode.BUNDLE_MISSING
    (bundle_dir / "classifier.onnx").unlink()
    assert _code(bundle_dir) == ErrorCode.BUNDLE_MISSING
    other = tmp_path / "c"
    other.mkdir()
    (other / "card.json").write_text("{not json")
    assert _code(other) == ErrorCode.BUNDLE_CORRUPT
    (other / "card.json").write_text(json.dumps({"format": "something-else/9"}))
    with pytest.raises(TriageError, match="triage-bundle/1"):
        load_bundle(other)


def test_card_with_path_escaping_the_bundle_is_refused(tmp_path: Path, bundle_dir: Path) -> None:
    card = json.loads((bundle_dir / "card.json").read_text())
    card["models"]["segmenter"]["file"] = "../segmenter.onnx"
    shutil.copy(bundle_dir / "segmenter.onnx", tmp_path / "segmenter.onnx")
    (bundle_dir / "card.json").write_text(json.dumps(card))
    with pytest.raises(TriageError, match="inside the bundle"):
        load_bundle(bundle_dir)
