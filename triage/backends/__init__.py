"""Inference backends behind one callable protocol: batch in, named outputs out.

`load_model(spec, device)` picks the backend the bundle's card names (ONNX Runtime on CPU by default,
with CUDA when requested and available; TensorRT engines when TensorRT is installed). A PyTorch module
can be wrapped with `training.torch_backend.TorchModel` for development (training extra).
"""

from __future__ import annotations

import importlib.util
from functools import cache
from typing import Literal, Protocol

import numpy as np
from numpy.typing import NDArray

from triage.bundle import ModelSpec
from triage.errors import ErrorCode, TriageError

Device = Literal["auto", "cpu", "cuda"]
DEVICES: tuple[Device, ...] = ("auto", "cpu", "cuda")


class Model(Protocol):
    """A model: float32 NCHW batch → {meaning: array} with the meanings of the card's `outputs`."""

    provider: str

    def __call__(self, batch: NDArray[np.float32]) -> dict[str, NDArray[np.float32]]: ...


@cache
def cuda_available() -> bool:
    """Whether a GPU path is installed: ONNX Runtime's CUDA provider (the gpu extra) or TensorRT."""
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers() or (
        importlib.util.find_spec("tensorrt") is not None
    )


def load_model(spec: ModelSpec, device: Device = "auto", threads: int | None = None) -> Model:
    """The backend for `spec` on `device`; raises TriageError with a one-line reason if it cannot run."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if spec.runtime == "onnx":
        from triage.backends.onnx import OnnxModel

        return OnnxModel(spec, device, threads)
    if spec.runtime == "tensorrt":
        from triage.backends.tensorrt import TensorRTModel

        return TensorRTModel(spec, device)
    raise TriageError(ErrorCode.BUNDLE_CORRUPT, f"unknown runtime {spec.runtime!r} for {spec.role}")
