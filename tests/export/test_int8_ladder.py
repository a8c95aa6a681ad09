"""The INT8 recipes of `triage export --int8`: the first convolution and the heads found and kept in float,
mixed precision adding the nodes of largest measured error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnxruntime.quantization.shape_inference import quant_pre_process

from export.errors import ExportError
from export.quantize import LADDER, Recipe, _name_nodes, end_nodes, quantize
from tests.bundles import classifier


def _float_weight_nodes(path: Path) -> set[str]:
    """Conv/Gemm nodes whose weight input is a float initializer (not a DequantizeLinear output)."""
    model = onnx.load(str(path))
    inits = {i.name for i in model.graph.initializer}
    return {n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm") and n.input[1] in inits}


def test_ends_are_the_first_conv_and_the_heads(tmp_path: Path) -> None:
    classifier(tmp_path / "c.onnx", 64, seed=0)
    quant_pre_process(str(tmp_path / "c.onnx"), str(tmp_path / "pre.onnx"), skip_symbolic_shape=True)
    model = _name_nodes(onnx.load(str(tmp_path / "pre.onnx")))
    nodes = {n.name: n for n in model.graph.node}
    ends = [nodes[name] for name in end_nodes(model)]
    assert sorted(n.op_type for n in ends) == ["Conv", "Conv", "Gemm"]
    assert any(n.input[0] == "image" for n in ends)  # the first convolution
    assert {o for n in ends for o in n.output} >= {"logit", "cam"}  # the heads


def test_recipes_keep_what_they_say_in_float(tmp_path: Path) -> None:
    classifier(tmp_path / "c.onnx", 64, seed=0)
    batches = [np.random.default_rng(i).normal(0, 1, (4, 1, 64, 64)).astype(np.float32) for i in range(3)]
    plain = quantize(tmp_path / "c.onnx", tmp_path / "q0.onnx", "image", batches, "classifier", LADDER[0])
    assert plain["float_node_names"] == [] and _float_weight_nodes(tmp_path / "q0.onnx") == set()
    ends = quantize(
        tmp_path / "c.onnx",
        tmp_path / "q1.onnx",
        "image",
        batches,
        "classifier",
        Recipe("Percentile", "ends"),
    )
    assert len(ends["float_node_names"]) == 3 and ends["calibration"] == "Percentile"
    assert _float_weight_nodes(tmp_path / "q1.onnx") == set(ends["float_node_names"])
    mixed = quantize(
        tmp_path / "c.onnx",
        tmp_path / "q2.onnx",
        "image",
        batches,
        "classifier",
        Recipe("Entropy", "ends+worst:1"),
    )
    assert len(mixed["float_node_names"]) == 4  # + the one quantised node left with the largest error
    assert _float_weight_nodes(tmp_path / "q2.onnx") == set(mixed["float_node_names"])


def test_a_recipe_that_would_keep_every_node_in_float_is_refused(tmp_path: Path) -> None:
    # the tests' classifier has 5 quantisable nodes (3 ends + 2): "ends+worst:9" would leave none
    classifier(tmp_path / "c.onnx", 64, seed=0)
    batches = [np.random.default_rng(i).normal(0, 1, (4, 1, 64, 64)).astype(np.float32) for i in range(3)]
    with pytest.raises(ExportError, match="keeps all 5 quantisable nodes of the classifier in float"):
        recipe = Recipe("Percentile", "ends+worst:9")
        quantize(tmp_path / "c.onnx", tmp_path / "q.onnx", "image", batches, "classifier", recipe)
