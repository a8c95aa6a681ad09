"""ONNX Runtime backend: CPU by default, CUDA when asked for (or `auto`) and available."""

from __future__ import annotations

import logging
from functools import cache

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from triage.bundle import ModelSpec
from triage.errors import ErrorCode, TriageError
from triage.system import usable_cores

logger = logging.getLogger(__name__)


GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


# A one-node ONNX model (Identity on a float[1], opset 17, IR 8), serialised: the runtime does not depend
# on the onnx package; tests/triage/test_providers.py checks these bytes against onnx.helper's model.
PROBE_MODEL = (
    b"\x08\x08\x12\x00:;\n\x10\n\x01x\x12\x01y\"\x08Identity\x12\x05probeZ\x0f\n\x01x\x12\n\n\x08\x08\x01"
    b"\x12\x04\n\x02\x08\x01b\x0f\n\x01y\x12\n\n\x08\x08\x01\x12\x04\n\x02\x08\x01B\x04\n\x00\x10\x11"
)


def active_providers() -> list[str]:
    """The providers an InferenceSession really activates here, GPU ones first: a one-node model is
    loaded with every available provider (the CUDA provider is listed whenever the wheel has it, even
    when its libraries or the driver are missing; it is dropped at session creation then)."""
    wanted = [p for p in ort.get_available_providers() if p in (*GPU_PROVIDERS, "CPUExecutionProvider")]
    if "CUDAExecutionProvider" in wanted:
        _preload_cuda_libraries()
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the failed provider's warning is the answer here, not news
    try:
        session = ort.InferenceSession(PROBE_MODEL, options, providers=wanted)
    except Exception:  # a GPU provider that raises instead of falling back
        return ["CPUExecutionProvider"]
    return list(session.get_providers())


@cache
def _preload_cuda_libraries() -> None:
    """Load the CUDA 13 / cuDNN 9 libraries of the nvidia-* wheels (the gpu extra) before the CUDA
    provider needs them: they live in site-packages, not on the loader's path. A no-op elsewhere."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:
            preload(directory="")
        except Exception as exc:  # the provider check after session creation reports the outcome
            logger.warning("preloading the CUDA libraries failed: %s: %s", type(exc).__name__, exc)


def default_threads() -> int:
    """Intra-op threads: the cores this process may use."""
    return usable_cores()


class OnnxModel:
    """One ONNX model in an InferenceSession; thread-safe to call (ONNX Runtime's `run` is)."""

    def __init__(self, spec: ModelSpec, device: str = "auto", threads: int | None = None) -> None:
        ort.disable_telemetry_events()  # Windows (ETW); elsewhere ORT_DISABLE_TELEMETRY: triage/__init__.py
        available = ort.get_available_providers()
        if device == "cuda" and "CUDAExecutionProvider" not in available:
            raise TriageError(
                ErrorCode.INFERENCE_FAILED,
                f"--device cuda asked for, but ONNX Runtime has no CUDA provider here "
                f"(available: {available}); install the gpu extra (onnxruntime-gpu)",
            )
        providers = ["CPUExecutionProvider"]
        if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        if providers[0] == "CUDAExecutionProvider":
            _preload_cuda_libraries()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle intra-op threads sleep instead of spinning: the cascade's reader and writer threads (and
        # other processes on a shared server) need the cores between operators (measured: +5-10 %
        # end-to-end throughput on 2 cores, benchmarks/bench_cascade.py).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # No CPU memory arena: the arena grows to the largest batch it has seen (the segmenter's batch is
        # the number of gated images, 0..N, times the TTA) and never shrinks, so resident memory climbed
        # for hundreds of studies. Without it, tensors come from malloc, which returns the large ones to
        # the system (triage/memory.py). Measured on 600 seed-architecture studies at 2048², 2 cores:
        # resident 1087 -> 323 MB, peak 1183 -> 563 MB, same wall time (102 vs 103 s).
        options.enable_cpu_mem_arena = False
        try:
            self.session = ort.InferenceSession(str(spec.path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for bad graphs
            raise TriageError(
                ErrorCode.BUNDLE_CORRUPT, f"{spec.path.name} is not a loadable ONNX model: {exc}"
            ) from exc
        self.spec = spec
        self.provider = self.session.get_providers()[0]
        if device == "cuda" and self.provider not in GPU_PROVIDERS:
            # ONNX Runtime falls back to the CPU, with only a warning, when the CUDA provider is in the
            # wheel but cannot load (no driver, a CUDA / cuDNN major the wheel was not built for).
            raise TriageError(
                ErrorCode.INFERENCE_FAILED,
                f"--device cuda asked for, but ONNX Runtime's CUDA provider did not start for "
                f"{spec.path.name} (active: {self.session.get_providers()}); check the NVIDIA driver and "
                f"that the CUDA 13 / cuDNN 9 libraries onnxruntime-gpu links are installed "
                f"(`triage version` lists the providers), or use --device cpu",
            )
        graph_outputs = {o.name for o in self.session.get_outputs()}
        missing = {k: v for k, v in spec.outputs.items() if v not in graph_outputs}
        if missing:
            raise TriageError(
                ErrorCode.BUNDLE_CORRUPT,
                f"{spec.path.name} has no outputs {missing}; the graph has {sorted(graph_outputs)}",
            )
        self._names = list(spec.outputs.items())
        logger.info("loaded %s on %s", spec.path.name, self.provider)

    def __call__(self, batch: NDArray[np.float32]) -> dict[str, NDArray[np.float32]]:
        values = self.session.run([name for _, name in self._names], {self.spec.input_name: batch})
        return {
            meaning: np.asarray(v, dtype=np.float32)
            for (meaning, _), v in zip(self._names, values, strict=True)
        }
