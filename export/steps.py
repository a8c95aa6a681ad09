"""The export steps, one implementation for ``triage export`` (every model of a new bundle:
:mod:`export.pipeline`) and ``triage export-saliency`` (a saliency model added to a bundle:
:mod:`export.saliency`).

Each step works on the models named by ``roles`` of a card being built in a staging folder: the ONNX graph
and its card entry, the parity check on validation images (the trained PyTorch module vs the graph, both
through the runtime's cascade code), INT8 variants (calibrated, checked, timed), TensorRT engines, the
provenance records; the card is written by :func:`write_card` and sealed by :func:`triage.bundle.seal`,
and the staging folder replaces the target only when every step passed.
"""

from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess
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
from export.images import ImageSet
from export.onnx_export import INPUT_NAME, OPSET, export_onnx, export_wrapper, graph_io, ort_optimize
from export.quantize import LADDER, quantize, time_model
from export.runs import Run
from training.torch_backend import TorchModel
from triage.backends import Model
from triage.bundle import CARD, TTA_CHOICES, Bundle, load_bundle
from triage.cascade.models import CascadeModels
from triage.system import usable_cores

INT8_PAYS = 1.2  # INT8 becomes the CPU default of a model only if it is at least this much faster here
INT8_MAX_CHANGES = 0.005  # … and changes at most this fraction of the validation images' decisions


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


def exported_record(opts: ExportOptions) -> dict[str, Any]:
    """The card's record of one export: when, by which versions, with which graph settings."""
    record = {
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "triage": triage.__version__,
        "git_commit": _git_commit(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "opset": opts.opset,
        "ort_optimized": opts.ort_optimize,
    }
    if opts.int8:
        record["int8_default"] = opts.int8_default
    return record


def run_record(run: Run) -> dict[str, Any]:
    """The card's record of the run a model was exported from."""
    return {
        "path": str(run.path),
        "role": run.card.role,
        "arch": run.card.arch.to_dict(),
        "checkpoint": run.card.checkpoint,
        "training": run.card.provenance,
    }


def onnx_requires(path: Path) -> dict[str, Any]:
    model = onnx.load(str(path), load_external_data=False)
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    return {
        "runtime": "onnxruntime",
        "onnxruntime": f">={ort.__version__.rsplit('.', 1)[0]}",
        "opsets": opsets,
        "io": graph_io(path),
        "devices": ["cpu", "cuda (onnxruntime-gpu)"],
    }


def export_model(run: Run, root: Path, opts: ExportOptions) -> dict[str, Any]:
    """Write ``root/<role>.onnx`` for ``run``; returns its card entry (input contract, outputs, needs)."""
    opts.on_step(f"ONNX export of the {run.role} ({run.card.arch.backbone})")
    file = f"{run.role}.onnx"
    names = export_onnx(run, root / file, opset=opts.opset)
    if opts.ort_optimize:
        ort_optimize(root / file)
    c = run.card
    entry: dict[str, Any] = {
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
    if run.role == "saliency":
        entry["map_activation"] = str(export_wrapper(run)[0].map_activation)
    entry["requires"] = onnx_requires(root / file)
    return entry


def write_card(root: Path, card: dict[str, Any]) -> Bundle:
    """Write the card under construction (not yet sealed) and read it back as a bundle."""
    (root / CARD).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return load_bundle(root, verify=False)


def torch_models(bundle: Bundle, runs: dict[str, Run]) -> CascadeModels:
    """The reference: the trained modules of ``runs`` (by role) through the runtime's cascade code; the
    bundle's other models (when a model is added to a bundle) as their FP32 graphs."""
    wrapped: dict[str, Model] = {}
    for role, run in runs.items():
        module, names = export_wrapper(run)
        wrapped[role] = TorchModel(module, names)
    return CascadeModels(bundle, "cpu", backends=wrapped, variant="fp32")


def check_parity(
    bundle: Bundle,
    reference: CascadeModels,
    variant: str,
    images: ImageSet,
    roles: tuple[str, ...],
    threads: int | None,
    device: str = "cpu",
) -> dict[str, dict[str, Any]]:
    """The ``variant`` graphs of ``roles`` against ``reference`` on ``images``: judged figures per role
    (ExportError naming the model and the figure outside tolerance)."""
    others: dict[str, Model] = {
        r: m for r in parity.ROLES if r not in roles and (m := getattr(reference, r)) is not None
    }
    candidate = CascadeModels(bundle, device, threads, backends=others, variant=variant)  # type: ignore[arg-type]
    figures = parity.measure(reference, candidate, images, bundle.thresholds, roles=roles)
    where = f"{len(images.items)} validation images"
    return {role: parity.judge(figs, role, variant, where) for role, figs in figures.items()}


def add_int8(
    card: dict[str, Any],
    root: Path,
    reference: CascadeModels,
    calib: ImageSet,
    images: ImageSet,
    opts: ExportOptions,
    roles: tuple[str, ...],
) -> Bundle:
    """INT8 variants of ``roles``: quantised on ``calib``, parity-checked on ``images``, timed here; the
    variant becomes the model's CPU default per ``opts.int8_default``."""
    judged: dict[str, dict[str, Any]] = {}
    failures: dict[str, list[str]] = {}
    for step, recipe in enumerate(LADDER):  # recipes in turn until every model's INT8 graph passes
        todo = tuple(role for role in roles if role not in judged)
        if not todo:
            break
        quantised: list[str] = []
        for role in todo:
            entry = card["models"][role]
            opts.on_step(
                f"INT8 quantisation of the {role} ({len(calib.items)} calibration images, "
                f"{recipe.calibration}, float nodes: {recipe.keep_float})"
            )
            file = entry["file"].replace(".onnx", ".int8.onnx")
            try:
                settings = quantize(
                    root / entry["file"], root / file, INPUT_NAME, calib.batches(role), role, recipe
                )
            except ExportError as exc:  # e.g. a recipe that would keep every node in float
                failures.setdefault(role, []).append(f"{recipe.calibration}/{recipe.keep_float}: {exc}")
                continue
            quantised.append(role)
            entry.setdefault("variants", {})["int8"] = {
                "file": file,
                "runtime": "onnx",
                "precision": "int8",
                "quantization": {**settings, "ladder_step": step + 1},
                "requires": {**onnx_requires(root / file), "devices": ["cpu"]},
            }
        bundle = write_card(root, card)
        opts.on_step("parity check of the INT8 variants")
        for role in quantised:
            try:
                judged.update(check_parity(bundle, reference, "int8", images, (role,), opts.threads))
            except ExportError as exc:
                failures.setdefault(role, []).append(f"{recipe.calibration}/{recipe.keep_float}: {exc}")
    missing = [role for role in roles if role not in judged]
    if missing and opts.int8_default == "int8":
        tried = " | ".join(f for role in missing for f in failures[role])
        raise ExportError(
            f"no INT8 recipe passed the parity check for {', '.join(missing)}: {tried} "
            "(without --int8-default int8 the export keeps such a model in FP32)"
        )
    for role in missing:  # FP32 stays this model's only CPU variant; the card says why
        entry = card["models"][role]
        dropped = entry.get("variants", {}).pop("int8", None)
        if dropped is not None:
            (root / dropped["file"]).unlink(missing_ok=True)
        if "variants" in entry and not entry["variants"]:
            del entry["variants"]
        entry["int8_refused"] = {
            "because": "no INT8 recipe passed the parity check; the FP32 graph is the CPU variant",
            "tolerance": parity.tolerance_for("int8"),
            "tried": failures[role],
        }
        best = min(failures[role], key=_worst_figure)
        opts.on_step(f"warning: INT8 refused for the {role}, it stays FP32 (best recipe: {best})")
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
        changed = int(figs.get("gate_mismatches", figs.get("mask_decision_mismatches", 0)))
        pays, same = speedup >= INT8_PAYS, changed <= INT8_MAX_CHANGES * figs["images"]
        choose = opts.int8_default == "int8" or (opts.int8_default == "auto" and pays and same)
        entry["default_variant"] = {**entry.get("default_variant", {}), "cpu": "int8" if choose else "fp32"}
        variant["default_because"] = (
            f"--int8-default {opts.int8_default}"
            if opts.int8_default != "auto"
            else f"speedup {speedup:.2f}x {'>=' if pays else '<'} {INT8_PAYS}x on this machine; "
            f"{changed} of {figs['images']} validation decisions changed "
            f"({'within' if same else 'over'} {INT8_MAX_CHANGES:.1%})"
        )
    return write_card(root, card)


def _worst_figure(failure: str) -> float:
    """The figure a parity failure message reports (``… = 0.134 > 0.05``), for choosing the closest."""
    match = re.search(r"= ([0-9.e+-]+) >", failure)
    return float(match.group(1)) if match else float("inf")


def add_tensorrt(
    card: dict[str, Any],
    root: Path,
    reference: CascadeModels,
    calib: ImageSet | None,
    images: ImageSet,
    opts: ExportOptions,
    roles: tuple[str, ...],
) -> Bundle:
    """TensorRT engines of ``roles`` (needs TensorRT and a GPU), parity-checked on ``images``."""
    from export.tensorrt_build import build_engine, engine_requires

    name = f"tensorrt-{opts.trt_precision}"
    for role in roles:
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
    bundle = write_card(root, card)
    opts.on_step(f"parity check of the TensorRT {opts.trt_precision.upper()} engines")
    judged = check_parity(bundle, reference, name, images, roles, opts.threads, device="cuda")
    for role, figs in judged.items():
        card["models"][role]["variants"][name]["parity"] = figs
    return write_card(root, card)


def replace_folder(tmp: Path, target: Path) -> None:
    """Move ``tmp`` to ``target``; an existing ``target`` is swapped out, then removed."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{int(time.time())}")
        target.rename(old)
    tmp.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
