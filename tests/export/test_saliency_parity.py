"""One export path for the saliency model: a tiny saliency run trained here with the KL map loss, exported
by `triage export` (with the classifier and segmenter) and by `triage export-saliency` (into a bundle
exported without it). Both ONNX maps must be the trained module's map — the spatial softmax of the
decoder's logits, divided by its peak — on real (synthetic DICOM) images prepared by the runtime."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from export.cli import app
from export.parity import TOLERANCES
from tests.export.conftest import synth_set
from tests.export.runs import make_pair
from training.config import resolve
from training.models import build_model
from training.run import RunRequest
from training.run_format import read_run_card
from training.saliency.task import TargetSpec
from training.saliency.train import train_saliency
from triage.bundle import Bundle, load_bundle
from triage.cascade.items import load_item
from triage.cascade.models import CascadeModels, normalised_cam
from triage.io.dicom import ReadPolicy

MAP_TOLERANCE = float(TOLERANCES["fp32"]["map"])


@dataclass
class Setup:
    runs: tuple[Path, Path]  # the saliency run's input contract: the runtime feeds all three one image
    other_runs: tuple[Path, Path]  # another normalisation: the runtime prepares the saliency input apart
    saliency: Path
    validation: Path
    calibration: Path
    root: Path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    root = tmp_path_factory.mktemp("saliency-export")
    data = synth_set(root / "data", 24, seed=3, size=128).parent
    term = {"name": "saliency_map", "weight": 1.0, "kind": "kl", "alpha": 0.5}
    config = resolve("saliency", "tiny", None, [], epochs=1, extra_losses=(term,))
    request = RunRequest(data, root / "saliency-run", fold="full", progress=False)
    saliency = train_saliency(config, request, TargetSpec("heatmap"))
    card = read_run_card(saliency)
    assert card.provenance["map_activation"] == "spatial_softmax"
    return Setup(
        make_pair(root / "runs", normalization=card.normalization),
        make_pair(root / "other-runs"),
        saliency,
        synth_set(root / "validation", 8, seed=5),
        synth_set(root / "calibration", 6, seed=6),
        root,
    )


def trained_map(run: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(map, logit) of the trained module, computed here: the KL loss trains softmax over the pixels."""
    card = read_run_card(run)
    module = build_model(card.arch)
    module.load_state_dict(load_file(str(run / card.checkpoint)))
    with torch.no_grad():
        logits, logit = module.eval()(torch.from_numpy(x))
    density = torch.softmax(logits.flatten(1), dim=1).view_as(logits)
    peak = density.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
    return (density / peak).numpy(), logit.numpy()


def saliency_inputs(bundle: Bundle, folder: Path) -> np.ndarray:
    items = [load_item(str(p), bundle, ReadPolicy()) for p in sorted(folder.rglob("*.dcm"))]
    return np.stack([it.sal_input.x for it in items])  # type: ignore[union-attr]


def graph_outputs(bundle: Bundle, x: np.ndarray, variant: str = "fp32") -> dict[str, np.ndarray]:
    spec = bundle.saliency
    assert spec is not None
    path = spec.path if variant == spec.precision else spec.variants[variant].path
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {spec.input_name: x}), strict=True))


def invoke(*args: str) -> None:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output


def test_export_and_export_saliency_give_the_trained_modules_map(setup: Setup) -> None:
    cls, seg = (str(p) for p in setup.runs)
    together, added = setup.root / "together", setup.root / "added"
    common = ["--validation", str(setup.validation), "--default-thresholds"]
    invoke("export", cls, seg, str(setup.saliency), "--out", str(together), *common)
    invoke("export", cls, seg, "--out", str(added), *common)
    invoke("export-saliency", "--run", str(setup.saliency), "--bundle", str(added))

    bundles = {"export": load_bundle(together), "export-saliency": load_bundle(added)}
    x = saliency_inputs(bundles["export"], setup.validation)
    expected_map, expected_logit = trained_map(setup.saliency, x)
    # the test can tell the activations apart: a sigmoid of the same logits is far from the map
    card = read_run_card(setup.saliency)
    module = build_model(card.arch)
    module.load_state_dict(load_file(str(setup.saliency / card.checkpoint)))
    with torch.no_grad():
        sigmoid = torch.sigmoid(module.eval()(torch.from_numpy(x))[0]).numpy()
    assert np.abs(sigmoid - expected_map).max() > 0.1

    got = {}
    for how, bundle in bundles.items():
        assert bundle.saliency is not None and bundle.saliency.outputs == {"map": "map", "logit": "logit"}
        out = graph_outputs(bundle, saliency_inputs(bundle, setup.validation))
        np.testing.assert_allclose(out["map"], expected_map, atol=MAP_TOLERANCE, err_msg=how)
        np.testing.assert_allclose(out["logit"], expected_logit, atol=1e-4, err_msg=how)
        # through the runtime's cascade code: the displayed map is the trained map (already peak-scaled)
        shown = CascadeModels(bundle, "cpu", 1, variant="fp32").saliency_map(x)
        np.testing.assert_allclose(shown, normalised_cam(expected_map[:, 0]), atol=MAP_TOLERANCE, err_msg=how)
        entry = json.loads((bundle.root / "card.json").read_text())["models"]["saliency"]
        assert entry["map_activation"] == "spatial_softmax"
        assert entry["parity"]["passed"] and entry["parity"]["images"] == 8
        got[how] = out
    for name in ("map", "logit"):
        np.testing.assert_allclose(got["export"][name], got["export-saliency"][name], atol=1e-5)


def test_export_saliency_adds_an_int8_variant_to_an_int8_bundle(setup: Setup) -> None:
    cls, seg = (str(p) for p in setup.other_runs)
    out = setup.root / "int8"
    invoke(
        "export", cls, seg, "--out", str(out), "--validation", str(setup.validation), "--default-thresholds",
        "--int8", "--calibration", str(setup.calibration), "--int8-default", "int8",
    )  # fmt: skip
    invoke("export-saliency", "--run", str(setup.saliency), "--bundle", str(out))
    bundle = load_bundle(out)
    assert bundle.saliency is not None and "int8" in bundle.saliency.variants
    card = json.loads((out / "card.json").read_text())
    entry = card["models"]["saliency"]
    int8 = entry["variants"]["int8"]
    assert int8["parity"]["passed"] and int8["parity"]["max_abs_diff"]["map"] <= TOLERANCES["int8"]["map"]
    assert entry["default_variant"]["cpu"] == "int8"  # as the bundle's export chose (--int8-default int8)
    added = card["provenance"]["runs"]["saliency"]["added"]
    assert added["calibration"]["path"] == str(setup.calibration)
    x = saliency_inputs(bundle, setup.validation)
    expected, _ = trained_map(setup.saliency, x)
    assert np.abs(graph_outputs(bundle, x, "int8")["map"] - expected).max() <= TOLERANCES["int8"]["map"]
    models = CascadeModels(bundle, "cpu", 1, variant="int8")  # every model has the variant
    assert models.variants["saliency"] == "int8" and models.saliency_map(x).shape[0] == len(x)
