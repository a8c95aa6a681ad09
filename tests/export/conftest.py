"""Export test fixtures: one exported bundle (tiny runs, INT8, Triton) shared by the module tests, with
thresholds chosen on the validation images so that both gate decisions and non-empty masks occur.

Tests marked ``gpu`` need TensorRT or ONNX Runtime's CUDA provider and a GPU: skipped cleanly otherwise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from export.pipeline import ExportOptions, export_bundle
from tests.export.runs import make_pair
from triage.bundle import Bundle, load_bundle
from triage.cascade.items import load_item
from triage.cascade.models import CascadeModels
from triage.io.dicom import ReadPolicy
from triage.synth.dataset import SynthRequest, synthesize


def gpu_available() -> bool:
    try:
        from triage.backends.tensorrt import gpu_count, import_cudart

        if gpu_count(import_cudart()) > 0:
            return True
    except ImportError:
        pass
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if gpu_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU with TensorRT or onnxruntime-gpu (none here)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@dataclass
class Exported:
    root: Path
    runs: tuple[Path, Path]
    bundle: Bundle
    card: dict[str, object]
    validation: Path
    triton: Path
    thresholds: Path


def synth_set(folder: Path, studies: int, seed: int, size: int = 256) -> Path:
    synthesize(SynthRequest(folder, studies, 0.5, size, seed), workers=1)
    return folder / "dicom-images-train"


def data_thresholds(bundle: Bundle, images: Path, out: Path) -> Path:
    """Thresholds at the medians of the (random) models' outputs on ``images``: gate passes about half,
    the triplet keeps a non-empty mask on most images."""
    models = CascadeModels(bundle, "cpu", 1, variant="fp32")
    items = [load_item(str(p), bundle, ReadPolicy()) for p in sorted(images.rglob("*.dcm"))]
    prob, _ = models.gate(np.stack([it.gate_input.x for it in items]), True)  # type: ignore[union-attr]
    seg = models.segment(np.stack([it.seg_input.x for it in items]), True)  # type: ignore[union-attr]
    th = {
        "gate": float(np.median(prob)),
        "top": float(np.quantile(seg, 0.7)),
        "min_area": 20,
        "bottom": float(np.quantile(seg, 0.5)),
        "min_component": 4,
        "chosen_by": {"data": "test validation set", "metric": "medians of random-model outputs"},
    }
    out.write_text(json.dumps(th))
    return out


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    root = tmp_path_factory.mktemp("export")
    cls, seg = make_pair(root / "runs")
    validation = synth_set(root / "validation", 12, seed=5)
    first = export_bundle([cls, seg], ExportOptions(out=root / "probe", validation=validation))
    assert first["thresholds"]["gate"] == 0.5  # from the classifier run
    thresholds = data_thresholds(load_bundle(root / "probe"), validation, root / "thresholds.json")
    opts = ExportOptions(
        out=root / "bundle",
        validation=validation,
        thresholds_file=thresholds,
        int8=True,
        calibration=synth_set(root / "calibration", 8, seed=6),
        triton=root / "triton",
    )
    card = export_bundle([cls, seg], opts)
    return Exported(
        root, (cls, seg), load_bundle(root / "bundle"), card, validation, root / "triton", thresholds
    )
