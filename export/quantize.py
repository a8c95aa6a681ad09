"""INT8 static quantisation for the CPU with ONNX Runtime (``onnxruntime.quantization``).

QDQ format (QuantizeLinear/DequantizeLinear pairs around each quantised operator; ONNX Runtime fuses
them into integer kernels on the CPU, and TensorRT reads the same graph as explicit quantisation),
per-channel symmetric INT8 weights, UINT8 activations, only Conv / MatMul / Gemm quantised so that the
heads' outputs (logit, CAM, sigmoid probability) stay in float. Activation ranges come from calibration
images prepared by the runtime's own code (:class:`ImageReader`).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from export.errors import ExportError

logger = logging.getLogger(__name__)

SETTINGS = {
    "format": "QDQ",
    "weights": "int8, symmetric, per channel",
    "activations": "uint8, asymmetric, per tensor",
    "operators": ["Conv", "MatMul", "Gemm"],
    "calibration": "MinMax",
}


class ImageReader(CalibrationDataReader):  # type: ignore[misc]
    """Feeds prepared batches ``{input_name: (N, C, H, W) float32}`` to the calibrator, once each."""

    def __init__(self, input_name: str, batches: list[np.ndarray]) -> None:
        self.input_name = input_name
        self.batches = batches
        self._it: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}

    def rewind(self) -> None:
        self._it = iter(self.batches)


def quantize(fp32: Path, out: Path, input_name: str, batches: list[np.ndarray], role: str) -> None:
    """Write the INT8 (QDQ) version of ``fp32`` to ``out``; ExportError naming the model on failure."""
    if not batches:
        raise ExportError(f"INT8 calibration of the {role}: no calibration images")
    with tempfile.TemporaryDirectory(prefix="triage-int8-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
            quantize_static(
                str(pre),
                str(out),
                ImageReader(input_name, batches),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=SETTINGS["operators"],
                calibrate_method=CalibrationMethod.MinMax,
            )
        except ExportError:
            raise
        except Exception as exc:
            raise ExportError(f"INT8 quantisation of the {role} failed: {type(exc).__name__}: {exc}") from exc
    _keep_output_shapes(fp32, out)


def _keep_output_shapes(fp32: Path, out: Path) -> None:
    """Give the INT8 graph the float graph's declared output shapes (the pre-processing's shape inference
    may rename symbolic dimensions), so that both describe the same interface."""
    reference = {o.name: o for o in onnx.load(str(fp32), load_external_data=False).graph.output}
    model = onnx.load(str(out))
    for output in model.graph.output:
        if output.name in reference:
            output.type.CopyFrom(reference[output.name].type)
    onnx.save(model, str(out))


def time_model(path: Path, input_name: str, batch: np.ndarray, *, threads: int, repeats: int = 3) -> float:
    """Best-of-``repeats`` milliseconds per image of ``path`` on ``batch`` with ONNX Runtime on the CPU."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {input_name: np.ascontiguousarray(batch, dtype=np.float32)}
    session.run(None, feed)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, feed)
        best = min(best, time.perf_counter() - t0)
    return 1000.0 * best / len(batch)
