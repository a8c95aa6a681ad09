"""TensorRT engines from the bundle's ONNX graphs, with the TensorRT 10 Python API (needs a GPU).

* an optimisation profile for the batch axis: min 1, opt ``max_batch // 2``, max ``max_batch`` (the
  runtime's batches are images × TTA transforms, so ``max_batch`` must cover ``--batch-size`` × TTA);
* FP16: ``BuilderFlag.FP16`` (TensorRT keeps FP32 where FP16 would lose accuracy);
* INT8: ``BuilderFlag.INT8`` (+ FP16 for the layers left in float) with an ``IInt8EntropyCalibrator2``
  fed by the calibration images that the runtime's own code prepared, over a fixed-batch calibration
  profile.

TensorRT 11 removed the precision flags and the calibrators (strong typing, explicit Q/DQ quantisation):
it is refused with a one-line message. TensorRT 10 does not install from PyPI (docs/export.md).
Engines are specific to the GPU model and the TensorRT version: the card records both
(:func:`engine_requires`), and the runtime refuses another TensorRT version.

Not verified on this project's machines, which have no GPU (tests marked ``gpu`` skip there).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import ExportError
from triage.backends.tensorrt import cuda_call, gpu_count, import_cudart, import_tensorrt

logger = logging.getLogger(__name__)
WORKSPACE_BYTES = 2 << 30


def require_tensorrt() -> tuple[Any, Any]:
    """(tensorrt, cudart) or ExportError with one line saying what is missing."""
    try:
        trt, cudart = import_tensorrt(), import_cudart()
    except ImportError as exc:
        raise ExportError(f"--tensorrt: {exc}") from exc
    if gpu_count(cudart) == 0:
        raise ExportError(
            "--tensorrt: no CUDA GPU is visible on this machine (TensorRT builds engines on the GPU "
            "that will run them)"
        )
    return trt, cudart


def engine_requires(max_batch: int) -> dict[str, Any]:
    trt, cudart = require_tensorrt()
    props = cuda_call(cudart, cudart.cudaGetDeviceProperties(0))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return {
        "runtime": "tensorrt",
        "tensorrt": str(trt.__version__),
        "gpu": name,
        "compute_capability": f"{props.major}.{props.minor}",
        "max_batch": max_batch,
        "devices": ["cuda"],
        "note": "an engine runs only with this TensorRT version on this GPU model",
    }


def _calibrator(trt: Any, cudart: Any, batches: list[np.ndarray], cache: Path) -> Any:
    """An entropy calibrator over equally sized batches (the last one padded by repetition)."""
    size = batches[0].shape[0]
    fixed = [
        b if len(b) == size else np.concatenate([b, b[np.arange(size - len(b)) % len(b)]]) for b in batches
    ]

    class Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.index = 0
            self.device = int(cuda_call(cudart, cudart.cudaMalloc(max(b.nbytes for b in fixed))))

        def get_batch_size(self) -> int:
            return int(size)

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.index >= len(fixed):
                return None
            host = np.ascontiguousarray(fixed[self.index], dtype=np.float32)
            self.index += 1
            kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
            cuda_call(cudart, cudart.cudaMemcpy(self.device, host.ctypes.data, host.nbytes, kind))
            return [self.device]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache.is_file() else None

        def write_calibration_cache(self, data: Any) -> None:
            cache.write_bytes(bytes(data))

    return Calibrator()


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    *,
    precision: str,
    input_name: str,
    input_shape: tuple[int, int, int],
    max_batch: int,
    calibration: list[np.ndarray] | None,
    role: str,
) -> None:
    """Parse ``onnx_path``, build a ``precision`` engine for batches 1..``max_batch``, write ``plan_path``."""
    trt, cudart = require_tensorrt()
    log = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(log)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT cannot parse the {role} graph {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    profile = builder.create_optimization_profile()
    c, h, w = input_shape
    profile.set_shape(input_name, (1, c, h, w), (max(1, max_batch // 2), c, h, w), (max_batch, c, h, w))
    config.add_optimization_profile(profile)
    config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        if not calibration:
            raise ExportError(f"TensorRT INT8 engine of the {role}: no calibration images")
        config.set_flag(trt.BuilderFlag.INT8)
        calib_profile = builder.create_optimization_profile()
        n = calibration[0].shape[0]
        calib_profile.set_shape(input_name, (n, c, h, w), (n, c, h, w), (n, c, h, w))
        config.set_calibration_profile(calib_profile)
        config.int8_calibrator = _calibrator(trt, cudart, calibration, plan_path.with_suffix(".calib"))
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError(
            f"TensorRT could not build the {precision.upper()} engine of the {role} (see its log)"
        )
    plan_path.write_bytes(bytes(plan))
    plan_path.with_suffix(".calib").unlink(missing_ok=True)
    logger.info("built %s (%d bytes)", plan_path.name, plan_path.stat().st_size)
