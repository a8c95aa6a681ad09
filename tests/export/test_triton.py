"""The Triton model repository: one model per bundle model and variant, config.pbtxt in protobuf text format
that Triton's ModelConfig schema accepts, with names and dims matching the ONNX graphs and the card."""

from __future__ import annotations

import filecmp
from pathlib import Path
from typing import Any

import onnx
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from tests.export.conftest import Exported

F = descriptor_pb2.FieldDescriptorProto


def _model_config_class() -> Any:
    """The subset of Triton's ModelConfig (model_config.proto: same names, numbers and types) that the
    generated configs use; text_format rejects any field or enum value outside it."""
    fdp = descriptor_pb2.FileDescriptorProto(
        name="triage_test_model_config.proto", package="inference", syntax="proto3"
    )
    dtype = fdp.enum_type.add(name="DataType")
    for i, n in enumerate(
        [
            "TYPE_INVALID",
            "TYPE_BOOL",
            "TYPE_UINT8",
            "TYPE_UINT16",
            "TYPE_UINT32",
            "TYPE_UINT64",
            "TYPE_INT8",
            "TYPE_INT16",
            "TYPE_INT32",
            "TYPE_INT64",
            "TYPE_FP16",
            "TYPE_FP32",
        ]
    ):
        dtype.value.add(name=n, number=i)

    def msg(name: str, fields: list[tuple[str, int, int, int, str]]) -> descriptor_pb2.DescriptorProto:
        m = fdp.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            field = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                field.type_name = type_name
        return m

    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    tensor = [("name", 1, F.TYPE_STRING, opt, ""), ("data_type", 2, F.TYPE_ENUM, opt, ".inference.DataType")]
    msg("ModelInput", [*tensor, ("dims", 4, F.TYPE_INT64, rep, "")])
    msg("ModelOutput", [*tensor, ("dims", 3, F.TYPE_INT64, rep, "")])
    msg(
        "ModelDynamicBatching",
        [
            ("preferred_batch_size", 1, F.TYPE_INT32, rep, ""),
            ("max_queue_delay_microseconds", 2, F.TYPE_UINT64, opt, ""),
        ],
    )
    group = msg(
        "ModelInstanceGroup",
        [
            ("count", 2, F.TYPE_INT32, opt, ""),
            ("kind", 4, F.TYPE_ENUM, opt, ".inference.ModelInstanceGroup.Kind"),
        ],
    )
    kind = group.enum_type.add(name="Kind")
    for i, n in enumerate(["KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"]):
        kind.value.add(name=n, number=i)
    msg(
        "ModelConfig",
        [
            ("name", 1, F.TYPE_STRING, opt, ""),
            ("platform", 2, F.TYPE_STRING, opt, ""),
            ("max_batch_size", 4, F.TYPE_INT32, opt, ""),
            ("input", 5, F.TYPE_MESSAGE, rep, ".inference.ModelInput"),
            ("output", 6, F.TYPE_MESSAGE, rep, ".inference.ModelOutput"),
            ("instance_group", 7, F.TYPE_MESSAGE, rep, ".inference.ModelInstanceGroup"),
            ("dynamic_batching", 11, F.TYPE_MESSAGE, opt, ".inference.ModelDynamicBatching"),
        ],
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


def _dims(value: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value if d.dim_value > 0 else -1 for d in value.type.tensor_type.shape.dim][1:]


def test_repository_layout(exported: Exported) -> None:
    names = sorted(p.name for p in exported.triton.iterdir())
    assert names == [
        "bundle_classifier",
        "bundle_classifier_int8",
        "bundle_segmenter",
        "bundle_segmenter_int8",
    ]
    root = exported.root / "bundle"
    for name, file in (
        ("bundle_classifier", "classifier.onnx"),
        ("bundle_segmenter_int8", "segmenter.int8.onnx"),
    ):
        folder = exported.triton / name
        assert filecmp.cmp(folder / "1" / "model.onnx", root / file, shallow=False)
        assert (folder / "config.pbtxt").is_file() and (folder / "triage-card.json").is_file()


@pytest.mark.parametrize("name", ["bundle_classifier", "bundle_segmenter", "bundle_classifier_int8"])
def test_config_parses_and_matches_the_graph(exported: Exported, name: str) -> None:
    config = text_format.Parse((exported.triton / name / "config.pbtxt").read_text(), _model_config_class()())
    graph = onnx.load(str(exported.triton / name / "1" / "model.onnx")).graph
    assert config.name == name and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 32 and config.dynamic_batching.max_queue_delay_microseconds > 0
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 16, 32]
    assert [(i.name, list(i.dims)) for i in config.input] == [
        (v.name, _dims(v)) for v in graph.input if v.name == "image"
    ]
    assert [(o.name, list(o.dims)) for o in config.output] == [(v.name, _dims(v)) for v in graph.output]
    role = "classifier" if "classifier" in name else "segmenter"
    spec = getattr(exported.bundle, role)
    assert list(config.input[0].dims) == [spec.channels, *spec.input_size]
    assert {o.name for o in config.output} == set(spec.outputs.values())
    kind_cpu = 2
    groups = [(g.kind, g.count) for g in config.instance_group]
    assert groups == ([(kind_cpu, 1)] if name.endswith("int8") else [])


def test_config_parses_with_tritons_own_schema_when_installed(exported: Exported) -> None:
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    for folder in exported.triton.iterdir():
        config = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        assert config.name == folder.name


def test_config_with_an_unknown_field_is_rejected_by_the_schema(tmp_path: Path) -> None:
    """The structural check can fail: a misspelt field is a parse error."""
    with pytest.raises(text_format.ParseError):
        text_format.Parse('name: "x"\nmax_batch: 8\n', _model_config_class()())
