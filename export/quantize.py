"""INT8 static quantisation for the CPU with ONNX Runtime (``onnxruntime.quantization``).

QDQ format (QuantizeLinear/DequantizeLinear pairs around each quantised operator; ONNX Runtime fuses
them into integer kernels on the CPU, and TensorRT reads the same graph as explicit quantisation),
per-channel symmetric INT8 weights, UINT8 activations, only Conv / MatMul / Gemm quantised so that the
heads' outputs (logit, CAM, sigmoid probability) stay in float. Activation ranges come from calibration
images prepared by the runtime's own code (:class:`ImageReader`). :data:`LADDER` lists the recipes
``triage export --int8`` tries in turn until the INT8 graph passes its parity check: MinMax on
everything; Percentile / Entropy calibration with the first convolution and the heads in float; then
mixed precision, keeping in float also the nodes with the largest measured quantisation error.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


@dataclass(frozen=True)
class Recipe:
    """One way to quantise: the activation calibrator and which quantisable nodes stay in float.

    ``keep_float``: "none", "ends" (the first convolution and the heads: the nodes whose outputs reach a
    graph output without another Conv/MatMul/Gemm) or "ends+worst:K" (also the K nodes with the lowest
    signal-to-quantisation-noise ratio measured on the calibration images: mixed precision by error)."""

    calibration: str = "MinMax"  # MinMax | Percentile | Entropy
    keep_float: str = "none"

    def describe(self) -> dict[str, Any]:
        return {**SETTINGS, "calibration": self.calibration, "float_nodes": self.keep_float}


# Tried in order by `triage export --int8` until the INT8 graph passes its parity check (export/pipeline.py).
LADDER = (
    Recipe("MinMax", "none"),
    Recipe("Percentile", "ends"),
    Recipe("Entropy", "ends"),
    Recipe("Percentile", "ends+worst:4"),
    Recipe("Percentile", "ends+worst:12"),
)
_METHODS = {
    "MinMax": CalibrationMethod.MinMax,
    "Percentile": CalibrationMethod.Percentile,
    "Entropy": CalibrationMethod.Entropy,
}
_QUANTISED = set(SETTINGS["operators"])


def _name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give unnamed nodes unique names (the quantiser selects nodes by name)."""
    taken = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
    return model


def end_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the first quantisable node after the input and of the heads (see :class:`Recipe`)."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    found: list[str] = []

    def walk(start: list[str], step: Any) -> None:
        seen: set[str] = set()
        todo = list(start)
        while todo:
            tensor = todo.pop()
            for node in step(tensor):
                if node.name in seen:
                    continue
                seen.add(node.name)
                if node.op_type in _QUANTISED:
                    found.append(node.name)
                else:
                    todo.extend(node.input if step is backward else node.output)

    def backward(tensor: str) -> list[onnx.NodeProto]:
        return [producer[tensor]] if tensor in producer else []

    def forward(tensor: str) -> list[onnx.NodeProto]:
        return consumers.get(tensor, [])

    walk([o.name for o in graph.output], backward)
    walk([i.name for i in graph.input], forward)
    return sorted(set(found))


def _worst_nodes(pre: Path, qdq: Path, reader: ImageReader, k: int) -> list[str]:
    """The ``k`` quantisable nodes whose outputs have the lowest SQNR (float vs QDQ graph, calibration
    images), measured with onnxruntime.quantization.qdq_loss_debug."""
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    with tempfile.TemporaryDirectory(prefix="triage-sqnr-") as tmp:
        float_aug, qdq_aug = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        modify_model_output_intermediate_tensors(str(pre), str(float_aug))
        modify_model_output_intermediate_tensors(str(qdq), str(qdq_aug))
        reader.rewind()
        float_acts = collect_activations(str(float_aug), reader)
        reader.rewind()
        qdq_acts = collect_activations(str(qdq_aug), reader)
    errors = compute_activation_error(create_activation_matching(qdq_acts, float_acts))
    model = onnx.load(str(pre))
    by_output = {n.output[0]: n.name for n in model.graph.node if n.op_type in _QUANTISED}
    sqnr = {by_output[t]: e["xmodel_err"] for t, e in errors.items() if t in by_output and "xmodel_err" in e}
    return sorted(sqnr, key=lambda name: sqnr[name])[:k]


def quantize(
    fp32: Path,
    out: Path,
    input_name: str,
    batches: list[np.ndarray],
    role: str,
    recipe: Recipe = LADDER[0],
) -> dict[str, Any]:
    """Write the INT8 (QDQ) version of ``fp32`` to ``out`` with ``recipe``; returns the settings used
    (with the names of the nodes kept in float); ExportError naming the model on failure."""
    if not batches:
        raise ExportError(f"INT8 calibration of the {role}: no calibration images")
    reader = ImageReader(input_name, batches)
    with tempfile.TemporaryDirectory(prefix="triage-int8-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
            named = _name_nodes(onnx.load(str(pre)))
            onnx.save(named, str(pre))
            exclude = end_nodes(named) if recipe.keep_float.startswith("ends") else []

            def run(excluded: list[str]) -> None:
                reader.rewind()
                quantize_static(
                    str(pre),
                    str(out),
                    reader,
                    quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    per_channel=True,
                    op_types_to_quantize=SETTINGS["operators"],
                    calibrate_method=_METHODS[recipe.calibration],
                    nodes_to_exclude=excluded,
                    extra_options={"CalibPercentile": 99.99},
                )

            run(exclude)
            if "worst:" in recipe.keep_float:
                k = int(recipe.keep_float.rsplit(":", 1)[1])
                exclude = sorted({*exclude, *_worst_nodes(pre, out, reader, k)})
                quantisable = [n.name for n in named.graph.node if n.op_type in _QUANTISED]
                if not set(quantisable) - set(exclude):
                    raise ExportError(
                        f"{recipe.keep_float} keeps all {len(quantisable)} quantisable nodes of the {role} "
                        "in float: that is the FP32 graph, not an INT8 one"
                    )
                run(exclude)
        except ExportError:
            raise
        except Exception as exc:
            raise ExportError(f"INT8 quantisation of the {role} failed: {type(exc).__name__}: {exc}") from exc
    _keep_output_shapes(fp32, out)
    quantised = sum(n.op_type in _QUANTISED for n in named.graph.node) - len(exclude)
    return {**recipe.describe(), "float_node_names": exclude, "quantised_nodes": quantised}


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
