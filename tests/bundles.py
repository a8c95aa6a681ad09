"""Tiny model bundles for runtime tests, built as ONNX graphs with `onnx.helper` (no torch needed).

classifier: 3 strided convs → features F (N, 16, S/8, S/8) → global average pool → linear → logit.
            The CAM output is the same linear head applied per position as a 1×1 conv, so that
            GAP(cam) == logit exactly (the closed form the product's CAM relies on).
segmenter:  a 5×5 box filter → sigmoid(k·(t − mean)): "dark regions" (lungs, air) light up.
saliency:   average-pooled sigmoid of a 3×3 conv, at 1/4 resolution (optional).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from triage.bundle import FORMAT, seal

OPSET = 17


def _save(path: Path, nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], size: int,
          outputs: list[tuple[str, list[Any]]]) -> None:
    graph = helper.make_graph(
        nodes,
        path.stem,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, size, size])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in outputs],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def classifier(path: Path, size: int, seed: int, bias: float = 0.0) -> None:
    rng = np.random.default_rng(seed)

    def he(*shape: int) -> np.ndarray:
        return rng.normal(0, np.sqrt(2.0 / np.prod(shape[1:])), shape)

    w_fc = rng.normal(0, 0.5, (1, 16))
    inits = {
        "w1": he(8, 1, 3, 3), "w2": he(16, 8, 3, 3), "w3": he(16, 16, 3, 3),
        "w_fc": w_fc, "b_fc": np.array([bias]), "w_cam": w_fc.reshape(1, 16, 1, 1),
    }
    conv = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["image", "w1"], ["c1"], **conv), helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], **conv), helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3"], ["c3"], **conv),
        helper.make_node("Relu", ["c3"], ["features"]),
        helper.make_node("GlobalAveragePool", ["features"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w_fc", "b_fc"], ["logit"], transB=1),
        helper.make_node("Conv", ["features", "w_cam", "b_fc"], ["cam"]),
    ]
    _save(path, nodes, inits, size, [("logit", ["N", 1]), ("cam", ["N", 1, size // 8, size // 8])])


def segmenter(path: Path, size: int, threshold: float = 0.35, gain: float = 25.0) -> None:
    inits = {"w": np.full((1, 1, 5, 5), -gain / 25.0), "b": np.array([gain * threshold])}
    nodes = [
        helper.make_node("Conv", ["image", "w", "b"], ["z"], kernel_shape=[5, 5], pads=[2, 2, 2, 2]),
        helper.make_node("Sigmoid", ["z"], ["probability"]),
    ]
    _save(path, nodes, inits, size, [("probability", ["N", 1, size, size])])


def saliency(path: Path, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    inits = {"w": rng.normal(0, 0.3, (1, 1, 3, 3)), "b": np.zeros(1)}
    nodes = [
        helper.make_node("Conv", ["image", "w", "b"], ["z"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["z"], ["s"]),
        helper.make_node("AveragePool", ["s"], ["map"], kernel_shape=[4, 4], strides=[4, 4]),
    ]
    _save(path, nodes, inits, size, [("map", ["N", 1, size // 4, size // 4])])


def build_tiny_bundle(root: Path, *, cls_size: int = 64, seg_size: int = 64, seed: int = 0,
                      gate: float = 0.5, classifier_bias: float = 0.0, with_saliency: bool = False,
                      tta: tuple[str, ...] = ("none", "hflip"), top: float = 0.75, min_area: int = 20,
                      bottom: float = 0.4, min_component: int = 4) -> Path:
    """Write a sealed bundle to `root` and return it."""
    root.mkdir(parents=True, exist_ok=True)
    classifier(root / "classifier.onnx", cls_size, seed, classifier_bias)
    segmenter(root / "segmenter.onnx", seg_size)
    models: dict[str, Any] = {
        "classifier": {
            "file": "classifier.onnx", "runtime": "onnx", "input_name": "image",
            "input_size": [cls_size, cls_size], "channels": 1, "resize": "letterbox",
            "normalization": {"kind": "meanstd", "mean": [0.5], "std": [0.25]},
            "outputs": {"logit": "logit", "cam": "cam"},
        },
        "segmenter": {
            "file": "segmenter.onnx", "runtime": "onnx", "input_name": "image",
            "input_size": [seg_size, seg_size], "channels": 1, "resize": "letterbox",
            "normalization": {"kind": "meanstd", "mean": [0.0], "std": [1.0]},
            "outputs": {"probability": "probability"},
        },
    }
    if with_saliency:
        saliency(root / "saliency.onnx", cls_size, seed + 1)
        models["saliency"] = {
            "file": "saliency.onnx", "runtime": "onnx", "input_name": "image",
            "input_size": [cls_size, cls_size], "channels": 1, "resize": "letterbox",
            "normalization": {"kind": "minmax"}, "outputs": {"map": "map"},
        }
    card = {
        "format": FORMAT, "name": "tiny-test", "version": "0.0.1", "models": models, "tta": list(tta),
        "thresholds": {"gate": gate, "top": top, "min_area": min_area, "bottom": bottom,
                       "min_component": min_component, "grid": "model",
                       "chosen_by": {"data": "none (test bundle)", "metric": "none", "value": None}},
        "provenance": {"kind": "hand-built ONNX graphs for tests", "seed": seed},
    }
    (root / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    seal(root)
    return root
