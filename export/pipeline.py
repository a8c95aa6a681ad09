"""``triage export``: runs → a sealed bundle, written to a temporary folder and renamed into place.

Order: load and check the runs → thresholds → ONNX graphs → card → parity on the validation images
(torch vs ONNX Runtime, with the runtime's cascade code) → optional INT8 variants (calibrated, checked,
timed) → optional TensorRT engines → seal (hashes) → optional Triton repository → rename. Any failure
removes the temporary folder: nothing half-written is ever left in ``--out``. The steps themselves
(:mod:`export.steps`) are the ones ``triage export-saliency`` (:mod:`export.saliency`) runs too.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from export import parity, steps
from export.errors import ExportError
from export.images import SYNTHETIC_CALIBRATION, SYNTHETIC_VALIDATION, image_set
from export.runs import Run, assign_roles, load_run
from export.steps import ExportOptions
from export.thresholds import resolve
from triage.bundle import CARD, FORMAT, load_bundle, seal

__all__ = ["ExportOptions", "export_bundle"]


def export_bundle(run_paths: list[Path], opts: ExportOptions) -> dict[str, Any]:
    """Export ``run_paths`` into the bundle ``opts.out``; returns the sealed card. Raises ExportError."""
    opts.check()
    if not run_paths:
        raise ExportError("no runs given: pass a classifier run and a segmenter run (and a saliency run)")
    opts.on_step("reading the runs")
    roles = assign_roles([load_run(p) for p in run_paths])
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
        steps.replace_folder(root, opts.out)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return card


def _build(
    roles: dict[str, Run], thresholds: dict[str, Any], root: Path, work: Path, opts: ExportOptions
) -> dict[str, Any]:
    names = tuple(roles)
    models = {role: steps.export_model(run, root, opts) for role, run in roles.items()}
    card: dict[str, Any] = {
        "format": FORMAT,
        "name": opts.name or opts.out.name,
        "version": opts.version,
        "models": models,
        "tta": list(opts.tta),
        "thresholds": thresholds,
        "provenance": {
            "runs": {role: steps.run_record(run) for role, run in roles.items()},
            "exported": steps.exported_record(opts),
        },
    }
    bundle = steps.write_card(root, card)
    images = image_set(opts.validation, bundle, work, what="validation folder", defaults=SYNTHETIC_VALIDATION)
    card["provenance"]["exported"]["validation"] = images.source
    opts.on_step(f"parity check torch vs ONNX Runtime on {len(images.items)} validation images")
    reference = steps.torch_models(bundle, roles)
    for role, figs in steps.check_parity(bundle, reference, "fp32", images, names, opts.threads).items():
        models[role]["parity"] = figs
    steps.write_card(root, card)
    calib = None
    if opts.int8 or (opts.tensorrt and opts.trt_precision == "int8"):
        calib = image_set(
            opts.calibration, bundle, work, what="calibration folder", defaults=SYNTHETIC_CALIBRATION
        )
        card["provenance"]["exported"]["calibration"] = calib.source
    if opts.int8 and calib is not None:
        steps.add_int8(card, root, reference, calib, images, opts, names)
    if opts.tensorrt:
        steps.add_tensorrt(card, root, reference, calib, images, opts, names)
    card["parity_tolerances"] = parity.TOLERANCES
    steps.write_card(root, card)
    seal(root)
    return json.loads((root / CARD).read_text(encoding="utf-8"))  # type: ignore[no-any-return]
