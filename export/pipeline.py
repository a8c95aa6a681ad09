"""``triage export``: runs → a sealed bundle, written to a temporary folder and renamed into place.

Order: load and check the runs → thresholds → ONNX graphs → card → parity on the validation images
(torch vs ONNX Runtime, with the runtime's cascade code) → optional INT8 variants (calibrated, checked,
timed) → optional TensorRT engines → seal (hashes) → optional Triton repository → rename. Any failure
removes the temporary folder: nothing half-written is ever left in ``--out``.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

import triage
from export import parity
from export.errors import ExportError
from export.images import SYNTHETIC_CALIBRATION, SYNTHETIC_VALIDATION, ImageSet, image_set
from export.onnx_export import INPUT_NAME, OPSET, export_onnx, export_wrapper, graph_io, ort_optimize
from export.quantize import SETTINGS as INT8_SETTINGS
from export.quantize import quantize, time_model
from export.runs import Run, assign_roles, load_run
from export.thresholds import resolve
from training.torch_backend import TorchModel
from triage.backends import Model
from triage.bundle import CARD, FORMAT, TTA_CHOICES, Bundle, load_bundle, seal
from triage.cascade.models import CascadeModels
from triage.system import usable_cores

logger = logging.getLogger(__name__)

INT8_PAYS = 1.2  # INT8 becomes the CPU default of a model only if it is at least this much faster here


@dataclass
class ExportOptions:
    out: Path
    name: str | None = None
    version: str = "1"
    tta: tuple[str, ...] = ("none", "hflip")
    thresholds_file: Path | None = None
    default_thresholds: bool = False
    validation: Path | None = None
    calibration: Path | None = None
    int8: bool = False
    int8_default: str = "auto"  # auto (if it pays here), int8, fp32
    tensorrt: bool = False
    trt_precision: str = "fp16"  # fp16 | int8
    max_batch: int = 32
    triton: Path | None = None
    opset: int = OPSET
    ort_optimize: bool = False
    threads: int | None = None
    force: bool = False
    on_step: Callable[[str], None] = field(default=lambda _msg: None)

    def check(self) -> None:
        bad = [t for t in self.tta if t not in TTA_CHOICES]
        if bad or not self.tta:
            raise ExportError(f"--tta {','.join(self.tta)}: valid transforms are {list(TTA_CHOICES)}")
        if self.int8_default not in ("auto", "int8", "fp32"):
            raise ExportError(f"--int8-default {self.int8_default!r}: valid: auto, int8, fp32")
        if self.trt_precision not in ("fp16", "int8"):
            raise ExportError(f"TensorRT precision {self.trt_precision!r}: valid: fp16, int8")
        if self.max_batch < 1:
            raise ExportError(f"--max-batch {self.max_batch}: must be at least 1")
        if (
            self.calibration is not None
            and not self.int8
            and not (self.tensorrt and self.trt_precision == "int8")
        ):
            raise ExportError("--calibration is used only with --int8 or --tensorrt --int8")
        for what, path in (("--out", self.out), ("--triton", self.triton)):
            if path is not None and path.exists() and not self.force:
                raise ExportError(
                    f"{what} {path} exists; choose another folder or pass --force to replace it"
                )


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(triage.__file__).parent,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _model_entry(run: Run, file: str, names: tuple[str, ...]) -> dict[str, Any]:
    c = run.card
    return {
        "file": file,
        "runtime": "onnx",
        "precision": "fp32",
        "input_name": INPUT_NAME,
        "input_size": list(c.input_size),
        "channels": c.channels,
        "resize": c.resize,
        "normalization": c.normalization,
        "outputs": {n: n for n in names},
    }


def _onnx_requires(path: Path) -> dict[str, Any]:
    model = onnx.load(str(path), load_external_data=False)
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    return {
        "runtime": "onnxruntime",
        "onnxruntime": f">={ort.__version__.rsplit('.', 1)[0]}",
        "opsets": opsets,
        "io": graph_io(path),
        "devices": ["cpu", "cuda (onnxruntime-gpu)"],
    }


def _torch_models(bundle: Bundle, roles: dict[str, Run]) -> CascadeModels:
    wrapped: dict[str, Model] = {}
    for role, run in roles.items():
        module, names = export_wrapper(run)
        wrapped[role] = TorchModel(module, names)
    return CascadeModels(bundle, "cpu", backends=wrapped)


def _write_card(root: Path, card: dict[str, Any]) -> Bundle:
    (root / CARD).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return load_bundle(root, verify=False)


def _check_parity(
    card: dict[str, Any],
    bundle: Bundle,
    reference: CascadeModels,
    variant: str,
    images: ImageSet,
    threads: int | None,
    device: str = "cpu",
) -> dict[str, dict[str, Any]]:
    candidate = CascadeModels(bundle, device, threads, variant=variant)  # type: ignore[arg-type]
    figures = parity.measure(reference, candidate, images, bundle.thresholds)
    where = f"{figures['classifier']['images']} validation images"
    judged = {}
    for role, figs in figures.items():
        judged[role] = parity.judge(figs, role, variant, where)
    return judged


def _int8(
    card: dict[str, Any],
    root: Path,
    bundle: Bundle,
    reference: CascadeModels,
    calib: ImageSet,
    images: ImageSet,
    opts: ExportOptions,
) -> Bundle:
    for role in bundle.card["models"]:
        entry = card["models"][role]
        opts.on_step(f"INT8 quantisation of the {role} ({len(calib.items)} calibration images)")
        file = entry["file"].replace(".onnx", ".int8.onnx")
        quantize(root / entry["file"], root / file, INPUT_NAME, calib.batches(role), role)
        entry.setdefault("variants", {})["int8"] = {
            "file": file,
            "runtime": "onnx",
            "precision": "int8",
            "quantization": INT8_SETTINGS,
            "requires": {**_onnx_requires(root / file), "devices": ["cpu"]},
        }
    bundle = _write_card(root, card)
    opts.on_step("parity check of the INT8 variants")
    judged = _check_parity(card, bundle, reference, "int8", images, opts.threads)
    threads = opts.threads or usable_cores()
    for role, figs in judged.items():
        entry = card["models"][role]
        variant = entry["variants"]["int8"]
        variant["parity"] = figs
        batch = np.stack([ImageSet.input(it, role) for it in images.items[:8]])
        fp32_ms = time_model(root / entry["file"], INPUT_NAME, batch, threads=threads)
        int8_ms = time_model(root / variant["file"], INPUT_NAME, batch, threads=threads)
        speedup = fp32_ms / int8_ms
        variant["speed"] = {
            "fp32_ms_per_image": round(fp32_ms, 2),
            "int8_ms_per_image": round(int8_ms, 2),
            "speedup": round(speedup, 3),
            "batch": len(batch),
            "threads": threads,
            "machine": f"{platform.machine()} {platform.processor()}".strip(),
            "measured": "at export, best of 3, on this machine",
        }
        choose = opts.int8_default == "int8" or (opts.int8_default == "auto" and speedup >= INT8_PAYS)
        entry["default_variant"] = {**entry.get("default_variant", {}), "cpu": "int8" if choose else "fp32"}
        variant["default_because"] = (
            f"--int8-default {opts.int8_default}"
            if opts.int8_default != "auto"
            else f"speedup {speedup:.2f}x {'>=' if choose else '<'} {INT8_PAYS}x on this machine"
        )
    return _write_card(root, card)


def _tensorrt(
    card: dict[str, Any],
    root: Path,
    bundle: Bundle,
    reference: CascadeModels,
    calib: ImageSet | None,
    images: ImageSet,
    opts: ExportOptions,
) -> Bundle:
    from export.tensorrt_build import build_engine, engine_requires

    name = f"tensorrt-{opts.trt_precision}"
    for role in bundle.card["models"]:
        entry = card["models"][role]
        file = entry["file"].replace(".onnx", f".{opts.trt_precision}.plan")
        opts.on_step(f"TensorRT {opts.trt_precision.upper()} engine of the {role}")
        batches = calib.batches(role) if calib is not None else None
        build_engine(
            root / entry["file"],
            root / file,
            precision=opts.trt_precision,
            input_name=INPUT_NAME,
            input_shape=(entry["channels"], *entry["input_size"]),
            max_batch=opts.max_batch,
            calibration=batches,
            role=role,
        )
        entry.setdefault("variants", {})[name] = {
            "file": file,
            "runtime": "tensorrt",
            "precision": opts.trt_precision,
            "requires": engine_requires(opts.max_batch),
            "max_batch": opts.max_batch,
        }
        entry["default_variant"] = {**entry.get("default_variant", {}), "cuda": name}
    bundle = _write_card(root, card)
    opts.on_step(f"parity check of the TensorRT {opts.trt_precision.upper()} engines")
    judged = _check_parity(card, bundle, reference, name, images, opts.threads, device="cuda")
    for role, figs in judged.items():
        card["models"][role]["variants"][name]["parity"] = figs
    return _write_card(root, card)


def _replace(tmp: Path, target: Path) -> None:
    """Move ``tmp`` to ``target``; an existing ``target`` (with --force) is swapped out, then removed."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{int(time.time())}")
        target.rename(old)
    tmp.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_bundle(run_paths: list[Path], opts: ExportOptions) -> dict[str, Any]:
    """Export ``run_paths`` into the bundle ``opts.out``; returns the sealed card. Raises ExportError."""
    opts.check()
    if not run_paths:
        raise ExportError("no runs given: pass a classifier run and a segmenter run (and a saliency run)")
    opts.on_step("reading the runs")
    roles = assign_roles([load_run(p) for p in run_paths])
    sal = roles.get("saliency")
    if sal is not None:
        c, s = roles["classifier"].card, sal.card
        if (c.input_size, c.channels, c.resize, c.normalization) != (
            s.input_size,
            s.channels,
            s.resize,
            s.normalization,
        ):
            raise ExportError(
                f"saliency run {sal.path}: its input contract (size, channels, resize, "
                f"normalisation) differs from the classifier's; the runtime feeds both the same "
                f"prepared image"
            )
    thresholds = resolve(
        roles, opts.thresholds_file, opts.default_thresholds, roles["segmenter"].card.input_size
    )
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=f".{opts.out.name}.tmp-", dir=opts.out.parent))
    try:
        with tempfile.TemporaryDirectory(prefix="triage-export-") as work:
            card = _build(roles, thresholds, root, Path(work), opts)
        if opts.triton is not None:
            from export.triton import write_repository

            opts.on_step(f"Triton model repository {opts.triton}")
            write_repository(load_bundle(root), opts.triton, max_batch=opts.max_batch, force=opts.force)
        root.chmod(0o755)  # mkdtemp makes it private
        _replace(root, opts.out)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return card


def _build(
    roles: dict[str, Run], thresholds: dict[str, Any], root: Path, work: Path, opts: ExportOptions
) -> dict[str, Any]:
    models: dict[str, Any] = {}
    for role, run in roles.items():
        opts.on_step(f"ONNX export of the {role} ({run.card.arch.backbone})")
        file = f"{role}.onnx"
        names = export_onnx(run, root / file, opset=opts.opset)
        if opts.ort_optimize:
            ort_optimize(root / file)
        models[role] = {**_model_entry(run, file, names), "requires": _onnx_requires(root / file)}
    card: dict[str, Any] = {
        "format": FORMAT,
        "name": opts.name or opts.out.name,
        "version": opts.version,
        "models": models,
        "tta": list(opts.tta),
        "thresholds": thresholds,
        "provenance": {
            "runs": {
                role: {
                    "path": str(run.path),
                    "role": run.card.role,
                    "arch": run.card.arch.to_dict(),
                    "checkpoint": run.card.checkpoint,
                    "training": run.card.provenance,
                }
                for role, run in roles.items()
            },
            "exported": {
                "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "triage": triage.__version__,
                "git_commit": _git_commit(),
                "torch": torch.__version__,
                "onnx": onnx.__version__,
                "onnxruntime": ort.__version__,
                "opset": opts.opset,
                "ort_optimized": opts.ort_optimize,
            },
        },
    }
    bundle = _write_card(root, card)
    images = image_set(opts.validation, bundle, work, what="validation folder", defaults=SYNTHETIC_VALIDATION)
    card["provenance"]["exported"]["validation"] = images.source
    opts.on_step(f"parity check torch vs ONNX Runtime on {len(images.items)} validation images")
    reference = _torch_models(bundle, roles)
    for role, figs in _check_parity(card, bundle, reference, "fp32", images, opts.threads).items():
        models[role]["parity"] = figs
    bundle = _write_card(root, card)
    calib = None
    if opts.int8 or (opts.tensorrt and opts.trt_precision == "int8"):
        calib = image_set(
            opts.calibration, bundle, work, what="calibration folder", defaults=SYNTHETIC_CALIBRATION
        )
        card["provenance"]["exported"]["calibration"] = calib.source
    if opts.int8:
        assert calib is not None
        bundle = _int8(card, root, bundle, reference, calib, images, opts)
    if opts.tensorrt:
        bundle = _tensorrt(card, root, bundle, reference, calib, images, opts)
    card["parity_tolerances"] = parity.TOLERANCES
    _write_card(root, card)
    seal(root)
    return json.loads((root / CARD).read_text(encoding="utf-8"))  # type: ignore[no-any-return]
