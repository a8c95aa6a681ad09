"""TensorRT engines (`runtime: tensorrt` in the card).

Engines are built by the export step on the GPU that will run them. This runtime does not yet execute
them: the check below gives a one-line reason instead of a traceback, whether TensorRT is missing
(no GPU machine, or the gpu extra not installed) or present.
"""

from __future__ import annotations

import importlib.util

import numpy as np
from numpy.typing import NDArray

from triage.bundle import ModelSpec
from triage.errors import ErrorCode, TriageError


class TensorRTModel:
    provider = "TensorRT"

    def __init__(self, spec: ModelSpec, device: str) -> None:
        if importlib.util.find_spec("tensorrt") is None:
            raise TriageError(
                ErrorCode.INFERENCE_FAILED,
                f"{spec.path.name} is a TensorRT engine but TensorRT is not installed "
                f"(install the gpu extra on a machine with an NVIDIA GPU), or use an ONNX bundle",
            )
        raise TriageError(
            ErrorCode.INFERENCE_FAILED,
            f"{spec.path.name}: running TensorRT engines is not supported by this version of the "
            f"runtime yet; export the bundle with ONNX models (the default)",
        )

    def __call__(self, batch: NDArray[np.float32]) -> dict[str, NDArray[np.float32]]:
        raise NotImplementedError
