"""TensorRT engines (``runtime: tensorrt`` in the card), run with the TensorRT 10 Python API.

An engine (``.plan``) is built by ``triage export --tensorrt`` on the GPU model and TensorRT version that
will run it; the card's ``requires.tensorrt`` records that version and loading refuses another one.
Device memory and streams come from NVIDIA's ``cuda-bindings`` runtime bindings (the gpu extra installs
them; TensorRT 10 itself does not install from PyPI: :data:`INSTALL_HINT`). Each call copies the batch to
the GPU, runs the engine with ``execute_async_v3`` (in chunks of at most the engine profile's largest
batch) and copies the outputs back; device buffers are kept and grown as needed. Calls are serialised by
a lock (one execution context).

Every way this cannot run here (no TensorRT, no cuda-python, no GPU, another TensorRT version, a damaged
or foreign engine, ``--device cpu``) is a one-line TriageError, never a traceback.

Not verified on this project's CI machines, which have no GPU: the GPU tests are marked ``gpu``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np
from numpy.typing import NDArray

from triage.bundle import ModelSpec
from triage.errors import ErrorCode, TriageError

logger = logging.getLogger(__name__)
INSTALL_HINT = (
    "TensorRT 10 does not install from PyPI (its tensorrt-cu13-libs 10.x are source stubs that download "
    "from NVIDIA's own index at install time); on a machine with an NVIDIA GPU, install the gpu extra and "
    "tensorrt-cu13==10.* from NVIDIA's package index (docs/export.md, TensorRT)"
)


def _fail(spec: ModelSpec, reason: str) -> TriageError:
    return TriageError(ErrorCode.INFERENCE_FAILED, f"{spec.path.name} is a TensorRT engine: {reason}")


def import_tensorrt() -> Any:
    """The ``tensorrt`` module (10.x), or ImportError with a one-line reason."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise ImportError(f"TensorRT is not installed; {INSTALL_HINT}") from exc
    major = int(str(trt.__version__).split(".")[0])
    if major != 10:
        raise ImportError(
            f"TensorRT {trt.__version__} is installed; triage uses the TensorRT 10 API "
            f"(TensorRT 11 removed the FP16/INT8 builder flags): install tensorrt>=10,<11"
        )
    return trt


def import_cudart() -> Any:
    """cuda-python's runtime bindings (new or old module path), or ImportError with a one-line reason."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError as exc:
            raise ImportError(f"cuda-python is not installed; {INSTALL_HINT}") from exc
    return cudart


def cuda_call(cudart: Any, result: Any) -> Any:
    """Unpack a cuda-python ``(error, value...)`` tuple; RuntimeError naming the CUDA error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        raise RuntimeError(f"CUDA error {err}")
    return values[0] if len(values) == 1 else tuple(values)


def gpu_count(cudart: Any) -> int:
    try:
        return int(cuda_call(cudart, cudart.cudaGetDeviceCount()))
    except RuntimeError:  # no driver, no device
        return 0


class _Buffer:
    """A device allocation that grows to the largest size asked for."""

    def __init__(self, cudart: Any) -> None:
        self.cudart = cudart
        self.ptr = 0
        self.nbytes = 0

    def ensure(self, nbytes: int) -> int:
        if nbytes > self.nbytes:
            if self.ptr:
                cuda_call(self.cudart, self.cudart.cudaFree(self.ptr))
            self.ptr = int(cuda_call(self.cudart, self.cudart.cudaMalloc(nbytes)))
            self.nbytes = nbytes
        return self.ptr

    def free(self) -> None:
        if self.ptr:
            self.cudart.cudaFree(self.ptr)
            self.ptr, self.nbytes = 0, 0


class TensorRTModel:
    """One engine with one execution context on GPU 0; a :class:`triage.backends.Model`."""

    provider = "TensorRT"

    def __init__(self, spec: ModelSpec, device: str) -> None:
        if device == "cpu":
            raise _fail(spec, "it runs only on a GPU; use --device auto or cuda, or --variant fp32 (CPU)")
        try:
            trt = import_tensorrt()
            cudart = import_cudart()
        except ImportError as exc:
            raise _fail(spec, str(exc)) from exc
        if gpu_count(cudart) == 0:
            raise _fail(spec, "no CUDA GPU is visible (driver, CUDA_VISIBLE_DEVICES)")
        built_with = str(spec.raw.get("requires", {}).get("tensorrt", ""))
        if built_with and built_with != str(trt.__version__):
            raise _fail(
                spec,
                f"built with TensorRT {built_with}, this is {trt.__version__}; engines are "
                f"version-specific: re-export with --tensorrt on this machine",
            )
        self._trt, self._cudart, self.spec = trt, cudart, spec
        self._logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self._logger)
        engine = runtime.deserialize_cuda_engine(spec.path.read_bytes())
        if engine is None:
            raise _fail(spec, "TensorRT could not deserialise it (damaged, or built for another GPU)")
        self._runtime, self.engine = runtime, engine
        self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if inputs != [spec.input_name]:
            raise _fail(spec, f"engine inputs are {inputs}, the card says [{spec.input_name!r}]")
        missing = sorted(set(spec.outputs.values()) - set(names))
        if missing:
            raise _fail(spec, f"engine has no outputs {missing}; it has {names}")
        self._outputs = list(spec.outputs.items())
        self._dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        self.max_batch = int(engine.get_tensor_profile_shape(spec.input_name, 0)[2][0])
        self._stream = cuda_call(cudart, cudart.cudaStreamCreate())
        self._buffers = {n: _Buffer(cudart) for n in names}
        self._lock = threading.Lock()
        logger.info("loaded TensorRT engine %s (max batch %d)", spec.path.name, self.max_batch)

    def _run(self, chunk: NDArray[np.float32]) -> dict[str, NDArray[np.float32]]:
        cudart, ctx, name = self._cudart, self.context, self.spec.input_name
        host = np.ascontiguousarray(chunk, dtype=self._dtypes[name])
        if not ctx.set_input_shape(name, tuple(host.shape)):
            raise RuntimeError(f"input shape {host.shape} is outside the engine's optimisation profile")
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        ptr = self._buffers[name].ensure(host.nbytes)
        cuda_call(cudart, cudart.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, h2d, self._stream))
        ctx.set_tensor_address(name, ptr)
        results: dict[str, np.ndarray] = {}
        for _, out_name in self._outputs:
            shape = tuple(ctx.get_tensor_shape(out_name))
            results[out_name] = np.empty(shape, dtype=self._dtypes[out_name])
            ctx.set_tensor_address(out_name, self._buffers[out_name].ensure(results[out_name].nbytes))
        if not ctx.execute_async_v3(int(self._stream)):
            raise RuntimeError("execute_async_v3 failed")
        for out_name, arr in results.items():
            src = self._buffers[out_name].ptr
            cuda_call(cudart, cudart.cudaMemcpyAsync(arr.ctypes.data, src, arr.nbytes, d2h, self._stream))
        cuda_call(cudart, cudart.cudaStreamSynchronize(self._stream))
        return {meaning: results[n].astype(np.float32, copy=False) for meaning, n in self._outputs}

    def __call__(self, batch: NDArray[np.float32]) -> dict[str, NDArray[np.float32]]:
        with self._lock:
            parts = [self._run(batch[i : i + self.max_batch]) for i in range(0, len(batch), self.max_batch)]
        return {meaning: np.concatenate([p[meaning] for p in parts]) for meaning, _ in self._outputs}

    def __del__(self) -> None:
        for buffer in getattr(self, "_buffers", {}).values():
            buffer.free()
