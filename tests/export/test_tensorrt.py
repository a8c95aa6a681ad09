"""TensorRT and ONNX Runtime CUDA: one-line errors where they cannot run (here: no GPU, no TensorRT), and the
real thing on a GPU machine (tests marked ``gpu``, skipped cleanly without one)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from export.errors import ExportError
from export.pipeline import ExportOptions, export_bundle
from tests.export.conftest import Exported
from triage.bundle import load_bundle, seal
from triage.cascade.items import load_item
from triage.cascade.models import CascadeModels
from triage.errors import TriageError
from triage.io.dicom import ReadPolicy

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.mark.skipif(
    HAS_TENSORRT, reason="TensorRT is installed: the missing-TensorRT message cannot be shown"
)
def test_export_tensorrt_without_tensorrt_is_one_line(tmp_path: Path, exported: Exported) -> None:
    opts = ExportOptions(
        out=tmp_path / "b", tensorrt=True, validation=exported.validation, thresholds_file=exported.thresholds
    )
    with pytest.raises(
        ExportError, match=r"^--tensorrt: TensorRT is not installed; TensorRT 10 does not install from PyPI"
    ) as info:
        export_bundle(list(exported.runs), opts)
    assert "\n" not in str(info.value) and not opts.out.exists()


def test_engine_variant_without_tensorrt_or_gpu_is_a_one_line_error(
    tmp_path: Path, exported: Exported
) -> None:
    """A bundle that names an engine: loading it on the CPU, or without TensorRT, says why in one line."""
    root = tmp_path / "b"
    shutil.copytree(exported.root / "bundle", root)
    card = json.loads((root / "card.json").read_text())
    (root / "classifier.fp16.plan").write_bytes(b"not an engine")
    card["models"]["classifier"]["variants"]["tensorrt-fp16"] = {
        "file": "classifier.fp16.plan",
        "runtime": "tensorrt",
        "requires": {"tensorrt": "10.0.0"},
    }
    card["models"]["classifier"]["default_variant"]["cuda"] = "tensorrt-fp16"
    (root / "card.json").write_text(json.dumps(card))
    seal(root)
    bundle = load_bundle(root)
    with pytest.raises(TriageError, match=r"classifier\.fp16\.plan is a TensorRT engine: ") as info:
        CascadeModels(bundle, "cpu", 1, variant="tensorrt-fp16")
    assert "\n" not in info.value.message
    if not HAS_TENSORRT:
        with pytest.raises(TriageError, match="TensorRT is not installed"):
            CascadeModels(bundle, "cuda", 1, variant="tensorrt-fp16")
    auto = CascadeModels(bundle, "auto", 1)  # no GPU here: the automatic choice falls back to the CPU
    assert auto.variants["classifier"] in ("fp32", "int8") or HAS_TENSORRT


def test_cuda_device_without_cuda_provider_is_one_line(exported: Exported) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed")
    with pytest.raises(TriageError, match="no CUDA provider here"):
        CascadeModels(exported.bundle, "cuda", 1, variant="fp32")


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_tensorrt_engines_build_check_and_run(tmp_path: Path, exported: Exported, precision: str) -> None:
    opts = ExportOptions(
        out=tmp_path / "b",
        tensorrt=True,
        trt_precision=precision,
        max_batch=16,
        validation=exported.validation,
        thresholds_file=exported.thresholds,
        int8=precision == "int8",
        triton=tmp_path / "triton",
    )
    card = export_bundle(list(exported.runs), opts)
    name = f"tensorrt-{precision}"
    for role in ("classifier", "segmenter"):
        variant = card["models"][role]["variants"][name]
        assert variant["parity"]["passed"] and variant["requires"]["tensorrt"].startswith("10.")
    bundle = load_bundle(tmp_path / "b")
    models = CascadeModels(bundle, "cuda", variant=name)
    assert models.classifier.provider == "TensorRT"
    items = [load_item(str(p), bundle, ReadPolicy()) for p in sorted(exported.validation.rglob("*.dcm"))]
    x = np.stack([it.gate_input.x for it in items])  # type: ignore[union-attr]
    prob, _ = models.gate(x, True)  # 12 images x 2 TTA = 24 > max batch 16: runs in chunks
    assert prob.shape == (12,)
    assert (tmp_path / "triton" / f"b_classifier_tensorrt_{precision}" / "1" / "model.plan").is_file()


@pytest.mark.gpu
def test_onnxruntime_cuda_matches_cpu(exported: Exported) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed")
    bundle = exported.bundle
    items = [load_item(str(p), bundle, ReadPolicy()) for p in sorted(exported.validation.rglob("*.dcm"))]
    x = np.stack([it.gate_input.x for it in items])  # type: ignore[union-attr]
    cpu, gpu = CascadeModels(bundle, "cpu", variant="fp32"), CascadeModels(bundle, "cuda", variant="fp32")
    assert gpu.provider == "CUDAExecutionProvider"
    np.testing.assert_allclose(gpu.gate(x, True)[0], cpu.gate(x, True)[0], atol=1e-4)
