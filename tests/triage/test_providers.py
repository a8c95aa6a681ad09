"""The GPU path is honest: `--device cuda` fails with one line (non-zero exit) when ONNX Runtime's CUDA
provider does not start, and `triage version` says which providers are available and active."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from tests.bundles import build_tiny_bundle
from triage.backends import onnx as onnx_backend
from triage.bundle import load_bundle
from triage.cascade.models import CascadeModels
from triage.cli.main import app
from triage.errors import TriageError
from triage.synth.dataset import SynthRequest, synthesize

CPU_BUILD = "CUDAExecutionProvider" not in ort.get_available_providers()


@pytest.fixture
def cuda_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The provider list of an onnxruntime-gpu wheel whose CUDA libraries or driver are missing: CUDA is
    listed, but a session cannot start it (here: the CPU wheel, which falls back to the CPU)."""
    monkeypatch.setattr(
        onnx_backend.ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )


@pytest.mark.skipif(not CPU_BUILD, reason="onnxruntime-gpu is installed: the CUDA provider may start")
def test_cuda_listed_but_not_active_is_one_line(tmp_path: Path, cuda_listed: None) -> None:
    bundle = load_bundle(build_tiny_bundle(tmp_path / "b"))
    with pytest.raises(TriageError, match="CUDA provider did not start") as caught:
        CascadeModels(bundle, "cuda", 1, variant="fp32")
    assert "\n" not in caught.value.message and "CPUExecutionProvider" in caught.value.message
    CascadeModels(bundle, "cpu", 1, variant="fp32")  # the CPU is unaffected
    CascadeModels(bundle, "auto", 1, variant="fp32")  # auto may fall back to the CPU


@pytest.mark.skipif(not CPU_BUILD, reason="onnxruntime-gpu is installed: the CUDA provider may start")
def test_predict_device_cuda_exits_non_zero(tmp_path: Path, cuda_listed: None) -> None:
    bundle = build_tiny_bundle(tmp_path / "b")
    synthesize(SynthRequest(tmp_path / "s", studies=1, size=256, seed=1))
    result = CliRunner().invoke(
        app,
        [
            "predict",
            str(tmp_path / "s"),
            "--model",
            str(bundle),
            "--out",
            str(tmp_path / "o"),
            "--device",
            "cuda",
        ],
    )
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if "error" in line]
    assert len(lines) == 1 and "CUDA provider did not start" in lines[0], result.output
    assert (
        not (tmp_path / "o" / "results.jsonl").exists() or not (tmp_path / "o" / "results.jsonl").read_text()
    )


def test_version_lists_available_and_active_providers() -> None:
    result = CliRunner().invoke(app, ["version"])
    assert result.exit_code == 0
    lines = dict(line.split(": ", 1) for line in result.output.splitlines() if ": " in line)
    assert set(lines["providers available"].split(", ")) == set(ort.get_available_providers())
    assert "CPUExecutionProvider" in lines["providers active"].split(", ")


def test_probe_model_is_the_documented_graph() -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="")
    model.ir_version = 8
    assert model.SerializeToString() == onnx_backend.PROBE_MODEL
