"""`triage evaluate --saliency --corruptions` on a bundle with a saliency model (ONNX Runtime, no torch):
the saliency section's numbers equal a recomputation from the runtime's own pieces, and the corruption
section has the 26 evaluation sets with their signs and a picture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.bundles import build_tiny_bundle
from triage import saliency_metrics as sm
from triage.bundle import load_bundle
from triage.cascade.models import CascadeModels
from triage.cascade.preprocess import fit, normalise
from triage.cli.main import app
from triage.corruptions import CORRUPTIONS
from triage.io.dicom import read_image
from triage.synth.dataset import SynthRequest, read_metadata, synthesize

runner = CliRunner()


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("evalsal")
    data = root / "set"
    synthesize(SynthRequest(data, studies=10, positive_fraction=0.5, size=128, seed=4), workers=1)
    # a positive head bias makes the CAM positive everywhere, so that every map has mass
    bundle = build_tiny_bundle(root / "bundle", gate=0.5, min_area=5, with_saliency=True, classifier_bias=5.0)
    out = root / "report"
    args = [
        "evaluate",
        "--model",
        str(bundle),
        "--data",
        str(data),
        "--out",
        str(out),
        "--bootstrap",
        "0",
        "--section",
        "summary",
        "--saliency",
        "--corruptions",
        "--cache",
        str(root / "cache"),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return data, bundle, out


def test_saliency_section_matches_a_recomputation(report: tuple[Path, Path, Path]) -> None:
    data, bundle_dir, out = report
    section = json.loads((out / "report.json").read_text())["sections"]["saliency"]
    assert section["maps_with_mass"] == {"CAM": 10, "saliency model": 10}
    bundle = load_bundle(bundle_dir)
    models = CascadeModels(bundle, "cpu", threads=1)
    assert bundle.saliency is not None
    inside = []
    for row in read_metadata(data):
        image = read_image(data / row["dicom"]).pixels
        grid, _ = fit(image, bundle.classifier.input_size, bundle.classifier.resize)
        x = normalise(grid, bundle.saliency)[None]
        saliency_map = models.saliency_map(x)[0]
        with Image.open(data / row["lungs"]) as img:
            lungs, _ = fit(
                (np.asarray(img) > 0).astype(np.float32), bundle.classifier.input_size, "letterbox"
            )
        h = sm.fit_map(saliency_map, lungs.shape)
        inside.append(sm.mass_inside(h / h.max(), lungs >= 0.5))
    assert section["lungs/mass_inside"]["saliency model"] == pytest.approx(float(np.mean(inside)), abs=2e-3)
    for key in ("lungs/diff", "target/kl", "target/cc", "target/sim", "lesion/ehr_auc"):
        assert set(section[key]) == {"CAM", "saliency model"}
    md = (out / "report.md").read_text()
    assert "## Saliency" in md and "mass inside the lungs" in md
    assert (out / "saliency.png").is_file()


def test_corruption_section_has_every_cell_and_the_sign(report: tuple[Path, Path, Path]) -> None:
    _, _, out = report
    section = json.loads((out / "report.json").read_text())["sections"]["corruptions"]
    cells = section["cells"]
    assert len(cells) == 1 + 5 * 5
    clean = cells[0]
    assert (clean["corruption"], clean["severity"], clean["delta_auc"], clean["delta_dice"]) == (
        "clean",
        0,
        0,
        0,
    )
    assert {c["corruption"] for c in cells[1:]} == set(CORRUPTIONS)
    assert clean["delta_dice_positives"] == 0 and clean["dice_positives"] is not None
    for cell in cells[1:]:
        assert cell["delta_dice"] == pytest.approx(clean["dice_per_image"] - cell["dice_per_image"])
        assert cell["delta_dice_positives"] == pytest.approx(clean["dice_positives"] - cell["dice_positives"])
    assert "positive = worse" in section["sign"]
    with Image.open(out / "corruptions.png") as img:
        assert img.size[0] > 600 and img.size[1] > 200
    assert "| gaussian |" in (out / "report.md").read_text()
