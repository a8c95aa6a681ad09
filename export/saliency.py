"""``triage export-saliency``: a saliency run added to an existing bundle as its ``saliency`` model.

The same steps as ``triage export`` (:mod:`export.steps`), for the one model: the graph
(:func:`export.onnx_export.export_onnx`, with the run's map activation), its card entry, the parity check
of the trained module against the graph on validation images through the runtime's cascade code, and an
INT8 variant when the bundle's classifier has one (calibrated and checked on images; CPU default chosen
as the bundle's export chose it). The bundle is copied to a staging folder beside it (model files
hard-linked where the file system allows), the card is rewritten there by the bundle writer and sealed,
and the staging folder replaces the bundle only when every step passed: a failed check leaves the bundle
as it was.

Validation and calibration images: by default the set the bundle's card records (the folder, if it still
exists; else the synthetic set with the recorded settings). A bundle's TensorRT engines and Triton
repository are not extended: the saliency model runs on ONNX Runtime beside them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from export import steps
from export.images import SYNTHETIC_CALIBRATION, SYNTHETIC_VALIDATION, ImageSet, image_set
from export.onnx_export import OPSET
from export.runs import load_run
from export.steps import ExportOptions
from triage.bundle import CARD, Bundle, load_bundle, seal

ROLE = "saliency"
ROLES = (ROLE,)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _stage(bundle: Path, card: dict[str, Any]) -> Path:
    """A copy of ``bundle`` beside it without its current saliency files; the card is a real copy (it is
    rewritten), the model files are hard links (never written: every new file is a new name)."""
    old = card["models"].get(ROLE, {})
    skip = {old.get("file"), *(v.get("file") for v in (old.get("variants") or {}).values())} - {None}
    root = Path(tempfile.mkdtemp(prefix=f".{bundle.name}.tmp-", dir=bundle.parent))
    shutil.copytree(
        bundle,
        root,
        copy_function=_link_or_copy,
        ignore=lambda folder, names: [n for n in names if Path(folder) == bundle and n in (*skip, CARD)],
        dirs_exist_ok=True,
    )
    shutil.copy2(bundle / CARD, root / CARD)
    return root


def _recorded(exported: dict[str, Any], key: str, given: Path | None) -> tuple[Path | None, dict[str, Any]]:
    """(folder, synthetic settings) for the validation or calibration set: ``given``, else the one the
    card records (its folder if it still exists, else its synthetic settings), else the defaults."""
    defaults = SYNTHETIC_VALIDATION if key == "validation" else SYNTHETIC_CALIBRATION
    if given is not None:
        return given, defaults
    source = exported.get(key) or {}
    if source.get("kind") == "folder" and Path(source.get("path", "")).is_dir():
        return Path(source["path"]), defaults
    settings = {k: source[k] for k in defaults if k in source}
    return None, {**defaults, **settings}


def _options(bundle: Path, card: dict[str, Any], threads: int | None) -> ExportOptions:
    """The export options the bundle was made with, as far as they concern one more model."""
    exported = card.get("provenance", {}).get("exported", {})
    classifier = card["models"]["classifier"]
    return ExportOptions(
        out=bundle,
        tta=tuple(card.get("tta", ("none",))),
        int8="int8" in (classifier.get("variants") or {}),
        int8_default=str(exported.get("int8_default", "auto")),
        opset=int(exported.get("opset", OPSET)),
        ort_optimize=bool(exported.get("ort_optimized", False)),
        threads=threads,
        force=True,
    )


def add_to_bundle(
    run: Path,
    bundle: Path,
    *,
    validation: Path | None = None,
    calibration: Path | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Export ``run`` into ``bundle`` as its saliency model (replacing one it has) and reseal; returns the
    card's ``models.saliency`` entry. ExportError (or TriageError for an unreadable bundle) otherwise,
    with the bundle unchanged."""
    sal = load_run(run, ROLE)
    load_bundle(bundle)  # the bundle must be whole before anything is built on it
    card: dict[str, Any] = json.loads((bundle / CARD).read_text(encoding="utf-8"))
    opts = _options(bundle, card, threads)
    exported = card.setdefault("provenance", {}).setdefault("exported", {})
    root = _stage(bundle, card)
    try:
        with tempfile.TemporaryDirectory(prefix="triage-export-") as work:
            card["models"][ROLE] = steps.export_model(sal, root, opts)
            staged = steps.write_card(root, card)
            images = _images(staged, exported, "validation", validation, Path(work))
            record = {**steps.exported_record(opts), "validation": images.source}
            opts.on_step(f"parity check torch vs ONNX Runtime on {len(images.items)} validation images")
            reference = steps.torch_models(staged, {ROLE: sal})
            judged = steps.check_parity(staged, reference, "fp32", images, ROLES, opts.threads)
            card["models"][ROLE]["parity"] = judged[ROLE]
            if opts.int8:
                calib = _images(staged, exported, "calibration", calibration, Path(work))
                record["calibration"] = calib.source
                steps.add_int8(card, root, reference, calib, images, opts, ROLES)
        card["provenance"].setdefault("runs", {})[ROLE] = {**steps.run_record(sal), "added": record}
        steps.write_card(root, card)
        seal(root)
        load_bundle(root)
        root.chmod(bundle.stat().st_mode & 0o7777)
        steps.replace_folder(root, bundle)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    entry: dict[str, Any] = json.loads((bundle / CARD).read_text(encoding="utf-8"))["models"][ROLE]
    return entry


def _images(bundle: Bundle, exported: dict[str, Any], key: str, given: Path | None, work: Path) -> ImageSet:
    folder, settings = _recorded(exported, key, given)
    return image_set(folder, bundle, work, what=f"{key} folder", defaults=settings)
