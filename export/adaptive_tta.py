"""Choose the gate's adaptive-TTA margin on validation images and write it into a bundle's card.

Full TTA runs the classifier once per transform (``none`` + ``hflip``: twice). Its flipped pass can only
change the gate decision of an image whose un-flipped probability p0 is close to the gate threshold t:
if TTA moves probabilities by at most s (|P(TTA) − p0| ≤ s), no image with |p0 − t| ≥ s changes side.
The margin is therefore the largest shift TTA made on the validation images (plus 1e-6; over every CPU
variant of the classifier, FP32 and INT8, since the card holds one margin for all), so that no
validation decision changes by construction (checked, and recorded with its source in the card's
``adaptive_tta.chosen_by``); the runtime then runs the flipped pass only on images within the margin
(``triage.cascade.models.CascadeModels.gate``). Images outside the validation set can shift more than
that: ``benchmarks/bench_cascade.py --variants fp32,fp32+fulltta`` counts their decision changes against
full TTA.

The segmenter's flip is not made adaptive: it changes the mask's pixels (the SEG object and the
overlay), not only the mask-or-no-mask decision, so skipping it would change outputs beyond a decision
margin (docs/speed.md).

``--held-out DIR`` instead checks a bundle's margin on other images: how many gate decisions adaptive TTA
changes there against full TTA (issue 16's goal: ≤ 0.5 % of the images); the card is not touched.

Usage:  python -m export.adaptive_tta BUNDLE --validation DIR [DIR ...]
        python -m export.adaptive_tta BUNDLE --held-out DIR [DIR ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import ExportError
from export.images import load_images
from triage.bundle import CARD, Bundle, load_bundle, seal
from triage.cascade.items import load_item
from triage.cascade.models import CascadeModels
from triage.errors import TriageError
from triage.io.dicom import ReadPolicy
from triage.io.inputs import expand_inputs

EPSILON = 1e-6


def choose_gate_margin(plain: np.ndarray, full: np.ndarray, gate: float) -> dict[str, Any]:
    """The margin for un-flipped probabilities ``plain`` and full-TTA probabilities ``full`` of the same
    images (see the module docstring), with what it was chosen from. ValueError if it would change a
    decision on these images (it cannot, unless the inputs are not what they claim)."""
    plain, full = np.asarray(plain, np.float64), np.asarray(full, np.float64)
    if plain.shape != full.shape or plain.ndim != 1 or len(plain) == 0:
        raise ValueError(f"need two equal non-empty 1-D arrays, got {plain.shape} and {full.shape}")
    shift = np.abs(full - plain)
    margin = float(shift.max()) + EPSILON
    adaptive = np.where(np.abs(plain - gate) < margin, full, plain)
    changed = int(np.sum((adaptive >= gate) != (full >= gate)))
    if changed:
        raise ValueError(f"margin {margin} changes {changed} decisions on its own data")
    return {
        "gate_margin": margin,
        "max_shift": float(shift.max()),
        "median_shift": float(np.median(shift)),
        "images": len(plain),
        "within_margin": int(np.sum(np.abs(plain - gate) < margin)),
        "decisions_changed": changed,
    }


def adapt(bundle_root: Path, validation: list[str], *, threads: int | None = None) -> dict[str, Any]:
    """Predict the validation images with and without the flipped pass, choose the margin, write it into
    ``bundle_root``'s card (``adaptive_tta``) and reseal the bundle. Returns the card's new block."""
    bundle = load_bundle(bundle_root)
    if bundle.tta[:1] != ("none",) or len(bundle.tta) < 2:
        raise ExportError(f"the bundle's TTA is {list(bundle.tta)}: adaptive TTA needs ['none', ...]")
    images = load_images(validation, bundle, what="validation folder", source={"data": validation})
    plain, full = [], []
    variants = cpu_variants(bundle)
    for variant in variants:  # one margin for all: the largest shift of any variant the CPU may run
        models = CascadeModels(bundle, "cpu", threads, variant=variant, adaptive=False)
        for batch in images.batches("classifier"):
            plain.append(models.gate(batch, use_tta=False)[0])
            full.append(models.gate(batch, use_tta=True)[0])
    chosen = choose_gate_margin(np.concatenate(plain), np.concatenate(full), bundle.thresholds.gate)
    chosen["images"] //= len(variants)
    chosen["within_margin_all_variants"] = chosen.pop("within_margin")
    block = {
        "gate_margin": chosen.pop("gate_margin"),
        "chosen_by": {
            **images.source,
            **chosen,
            "gate": bundle.thresholds.gate,
            "variants": variants,
            "tta": list(bundle.tta),
            "rule": "largest |P(TTA) - P(un-flipped)| on these images + 1e-6: no decision changes on them",
            "tool": "python -m export.adaptive_tta",
        },
    }
    card_path = bundle_root / CARD
    card = json.loads(card_path.read_text(encoding="utf-8"))
    card["adaptive_tta"] = block
    card_path.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    seal(bundle_root)
    return block


def cpu_variants(bundle: Bundle) -> list[str]:
    """The variants ``CascadeModels`` can run on the CPU: the classifier's base and those of its ONNX
    variants (e.g. "int8"; not TensorRT engines) that every model of the bundle has."""
    spec = bundle.classifier
    others = [s for s in (bundle.segmenter, bundle.saliency) if s is not None]
    return [spec.precision] + [
        name
        for name, v in spec.variants.items()
        if v.runtime == "onnx" and all(name in o.variants for o in others)
    ]


def check_held_out(
    bundle_root: Path, paths: list[str], *, threads: int | None = None, batch: int = 8
) -> dict[str, Any]:
    """Gate decisions of the bundle's adaptive TTA against full TTA on the images under ``paths`` (read
    in batches, nothing kept: any number of images), per CPU variant of the classifier. The adaptive
    probability is full TTA's inside the margin and the un-flipped one outside (what
    ``CascadeModels.gate`` computes, tested to 1e-6)."""
    bundle = load_bundle(bundle_root)
    if bundle.adaptive_tta is None:
        raise ExportError(f"{bundle_root} has no adaptive_tta margin; choose one with --validation first")
    files, _ = expand_inputs(paths)
    variants = cpu_variants(bundle)
    models = {v: CascadeModels(bundle, "cpu", threads, variant=v, adaptive=False) for v in variants}
    plain_all: dict[str, list[np.ndarray]] = {v: [] for v in variants}
    full_all: dict[str, list[np.ndarray]] = {v: [] for v in variants}
    unreadable = 0
    for start in range(0, len(files), batch):
        items = [load_item(str(f), bundle, ReadPolicy(), keep="none") for f in files[start : start + batch]]
        good = [it.gate_input.x for it in items if it.error is None and it.gate_input is not None]
        unreadable += len(items) - len(good)
        if good:
            x = np.stack(good)
            for v, m in models.items():
                plain_all[v].append(m.gate(x, use_tta=False)[0])
                full_all[v].append(m.gate(x, use_tta=True)[0])
    if not plain_all[variants[0]]:
        raise ExportError(f"held-out {', '.join(paths)}: no readable radiograph")
    gate, margin = bundle.thresholds.gate, bundle.adaptive_tta.gate_margin
    out: dict[str, Any] = {"gate": gate, "gate_margin": margin, "unreadable_skipped": unreadable}
    for v in variants:
        plain = np.concatenate(plain_all[v]).astype(np.float64)
        full = np.concatenate(full_all[v]).astype(np.float64)
        inside = np.abs(plain - gate) < margin
        adaptive = np.where(inside, full, plain)
        changed = int(np.sum((adaptive >= gate) != (full >= gate)))
        out[v] = {
            "images": len(plain),
            "within_margin": int(inside.sum()),
            "decisions_changed": changed,
            "decisions_changed_fraction": changed / len(plain),
            "max_shift": float(np.abs(full - plain).max()),
            "shifts_beyond_margin": int(np.sum(np.abs(full - plain) >= margin)),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export.adaptive_tta",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("bundle", type=Path, help="the bundle folder (its card is rewritten and resealed)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--validation", nargs="+", help="validation DICOM files or folders: choose the margin")
    which.add_argument("--held-out", nargs="+", help="other DICOM files or folders: check the card's margin")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        if args.held_out:
            block = check_held_out(args.bundle, args.held_out, threads=args.threads)
        else:
            block = adapt(args.bundle, args.validation, threads=args.threads)
    except (ExportError, ValueError, TriageError) as exc:
        print(f"adaptive_tta: error: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2
    print(json.dumps(block, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
