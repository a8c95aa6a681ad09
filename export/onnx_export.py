"""PyTorch networks → ONNX graphs the runtime runs (opset ≥ 17, dynamic batch, constant folding).

Graph outputs per role (the names go into the card's ``outputs``):

* classifier: ``logit`` (N, 1) and ``cam`` (N, 1, h, w), one pass through the backbone
  (:class:`training.models.ClassifierForExport`; the spatial mean of ``cam`` is ``logit``);
* segmenter: ``probability`` (N, 1, H, W) = sigmoid of the logits
  (:class:`~training.models.SegmenterForExport`);
* saliency: ``map`` (N, 1, H, W) in [0, 1] and ``logit`` (N, 1)
  (:func:`training.models.saliency_for_export`: the map activation the run card records, ``sigmoid``
  after BCE/MSE training, the spatial softmax divided by its peak after KL training).

The card's ``outputs`` map each meaning to the graph output of the same name; the batch axis is called
``batch`` on every input and output. ``triage export`` and ``triage export-saliency`` both write graphs
through :func:`export_onnx`.

Optionally the graph is rewritten by ONNX Runtime's offline optimiser (``ORT_ENABLE_BASIC``: constant
folding, redundant-node elimination; the result is plain ONNX that any runtime can read).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import onnxruntime as ort
import torch
from torch import nn

import training.models as tm
from export.errors import ExportError
from export.runs import Run, dummy_input
from training.fusion import DualEncoderNet

OPSET = 17
INPUT_NAME = "image"
BATCH_AXIS = "batch"
SALIENCY_OUTPUTS = ("map", "logit")


def export_wrapper(run: Run) -> tuple[nn.Module, tuple[str, ...]]:
    """(module whose forward is the runtime's graph, its output names) for the run's role."""
    module = run.module
    if run.role == "classifier":
        if not isinstance(module, tm.CamClassifier):
            raise ExportError(
                f"classifier run {run.path}: the network is a {type(module).__name__}, "
                f"not a CamClassifier (arch kind 'classifier')"
            )
        return tm.ClassifierForExport(module).eval(), ("logit", "cam")
    if run.role == "segmenter":
        if not isinstance(module, tm.Segmenter):
            raise ExportError(
                f"segmenter run {run.path}: the network is a {type(module).__name__}, "
                f"not a Segmenter (arch kind 'segmenter')"
            )
        return tm.SegmenterForExport(module).eval(), ("probability",)
    if not isinstance(module, tm.SaliencyNet | DualEncoderNet):
        raise ExportError(
            f"saliency run {run.path}: the network is a {type(module).__name__}, "
            f"not a SaliencyNet (arch kind 'saliency') or a dual-encoder network"
        )
    try:
        wrapper = tm.saliency_for_export(module, run.card.provenance)
    except ValueError as exc:
        raise ExportError(f"saliency run {run.path}: {exc}") from exc
    return wrapper, SALIENCY_OUTPUTS


def export_onnx(run: Run, path: Path, *, opset: int = OPSET) -> tuple[str, ...]:
    """Write the run's graph to ``path``; returns its output names. The batch axis is dynamic."""
    if opset < 17:
        raise ExportError(f"--opset {opset}: the runtime needs opset 17 or newer")
    module, names = export_wrapper(run)
    x = dummy_input(run)
    axes = {INPUT_NAME: {0: BATCH_AXIS}, **{name: {0: BATCH_AXIS} for name in names}}
    with warnings.catch_warnings():
        # torch ≥ 2.9 warns that the TorchScript-based exporter is legacy; the dynamo exporter needs
        # onnxscript, which the training extra does not install. The graphs are checked below.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        try:
            torch.onnx.export(
                module,
                (x,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=list(names),
                dynamic_axes=axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        except Exception as exc:
            raise ExportError(
                f"{run.role} run {run.path}: ONNX export failed: {type(exc).__name__}: {exc}"
            ) from exc
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    found = [o.name for o in model.graph.output]
    if found != list(names):
        raise ExportError(f"{run.role}: the exported graph has outputs {found}, expected {list(names)}")
    return names


def ort_optimize(path: Path) -> None:
    """Rewrite ``path`` with ONNX Runtime's basic offline optimisations (portable plain ONNX)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    tmp = path.with_suffix(".opt.onnx")
    options.optimized_model_filepath = str(tmp)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    tmp.replace(path)


def graph_io(path: Path) -> dict[str, dict[str, list[int | str]]]:
    """{"inputs": {name: dims}, "outputs": {name: dims}} of an ONNX file (dims: ints or symbolic names)."""
    model = onnx.load(str(path), load_external_data=False)

    def dims(value: onnx.ValueInfoProto) -> list[int | str]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    inits = {i.name for i in model.graph.initializer}
    return {
        "inputs": {v.name: dims(v) for v in model.graph.input if v.name not in inits},
        "outputs": {v.name: dims(v) for v in model.graph.output},
    }
