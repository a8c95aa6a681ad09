"""A Triton Inference Server model repository from a sealed bundle, for sites that already run Triton.

Layout (one Triton model per bundle model and variant; Triton reads ``config.pbtxt`` and the version
folder, and ignores the other files)::

    REPO/<name>_classifier/config.pbtxt      platform onnxruntime_onnx, dynamic batching
    REPO/<name>_classifier/1/model.onnx
    REPO/<name>_classifier/triage-card.json  the bundle's card: preprocessing, TTA, thresholds, parity
    REPO/<name>_classifier_int8/...          INT8 variant (ONNX, CPU)
    REPO/<name>_classifier_tensorrt_fp16/... platform tensorrt_plan, 1/model.plan, KIND_GPU
    REPO/<name>_segmenter/...                (and _saliency)

Input and output names and dimensions come from the ONNX graphs (batch dimension left out:
``max_batch_size`` > 0). The cascade itself (gate → segmenter on the gated images, TTA, triplet
threshold) stays with the client: Triton serves the models, the card says how to use them.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from export.errors import ExportError
from export.onnx_export import graph_io
from triage.bundle import Bundle, ModelSpec

PLATFORMS = {"onnx": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}
FILENAMES = {"onnx": "model.onnx", "tensorrt": "model.plan"}
QUEUE_DELAY_US = 2000  # how long Triton may wait to fill a batch


def model_name(bundle: Bundle, spec: ModelSpec) -> str:
    base = re.sub(r"[^A-Za-z0-9_]+", "_", bundle.name).strip("_") or "triage"
    suffix = "" if spec.precision == "fp32" and spec.runtime == "onnx" else "_" + spec.precision
    return re.sub(r"[^A-Za-z0-9_]+", "_", f"{base}_{spec.role}{suffix}")


def _dims(values: list[int | str]) -> list[int]:
    return [v if isinstance(v, int) and v > 0 else -1 for v in values[1:]]  # drop the batch axis


def config_text(name: str, spec: ModelSpec, io: dict[str, dict[str, list[int | str]]], max_batch: int) -> str:
    """The config.pbtxt of one model (protobuf text format of Triton's ModelConfig)."""

    def tensor(tname: str, dims: list[int]) -> str:
        shape = ", ".join(map(str, dims))
        return f'  {{\n    name: "{tname}"\n    data_type: TYPE_FP32\n    dims: [ {shape} ]\n  }}'

    inputs = ",\n".join(tensor(n, _dims(d)) for n, d in io["inputs"].items())
    outputs = ",\n".join(tensor(n, _dims(d)) for n, d in io["outputs"].items())
    preferred = sorted({b for b in (max_batch // 4, max_batch // 2, max_batch) if b >= 1})
    lines = [
        f'name: "{name}"',
        f'platform: "{PLATFORMS[spec.runtime]}"',
        f"max_batch_size: {max_batch}",
        f"input [\n{inputs}\n]",
        f"output [\n{outputs}\n]",
        "dynamic_batching {",
        f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]",
        f"  max_queue_delay_microseconds: {QUEUE_DELAY_US}",
        "}",
    ]
    if spec.runtime == "tensorrt":
        lines.append("instance_group [\n  {\n    count: 1\n    kind: KIND_GPU\n  }\n]")
    elif spec.precision == "int8":  # the QDQ INT8 graph is for ONNX Runtime's CPU kernels
        lines.append("instance_group [\n  {\n    count: 1\n    kind: KIND_CPU\n  }\n]")
    return "\n".join(lines) + "\n"


def _io_for(bundle: Bundle, spec: ModelSpec) -> dict[str, dict[str, list[int | str]]]:
    """Graph I/O: from the ONNX file itself, or for an engine from its ONNX source (the base model)."""
    source = spec if spec.runtime == "onnx" else getattr(bundle, spec.role)
    return graph_io(source.path)


def write_repository(bundle: Bundle, repo: Path, *, max_batch: int = 32, force: bool = False) -> list[str]:
    """Write the repository for ``bundle`` to ``repo`` (temp folder, then rename); returns the model names."""
    if repo.exists() and not force:
        raise ExportError(f"--triton {repo} exists; choose another folder or pass --force to replace it")
    repo.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{repo.name}.tmp-", dir=repo.parent))
    names: list[str] = []
    try:
        for base in (bundle.classifier, bundle.segmenter, bundle.saliency):
            if base is None:
                continue
            for spec in (base, *base.variants.values()):
                limit = int(spec.raw.get("max_batch", max_batch))
                name = model_name(bundle, spec)
                folder = tmp / name
                (folder / "1").mkdir(parents=True)
                shutil.copy2(spec.path, folder / "1" / FILENAMES[spec.runtime])
                io = _io_for(bundle, spec)
                (folder / "config.pbtxt").write_text(config_text(name, spec, io, min(max_batch, limit)))
                shutil.copy2(bundle.root / "card.json", folder / "triage-card.json")
                names.append(name)
        tmp.chmod(0o755)
        if repo.exists():
            shutil.rmtree(repo)
        tmp.rename(repo)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return names


def describe(bundle: Bundle) -> dict[str, Any]:
    """{model name: role/variant} of the repository ``bundle`` would give (for docs and tests)."""
    out = {}
    for base in (bundle.classifier, bundle.segmenter, bundle.saliency):
        for spec in (base, *base.variants.values()) if base is not None else ():
            out[model_name(bundle, spec)] = {
                "role": spec.role,
                "variant": spec.precision,
                "runtime": spec.runtime,
            }
    return out
