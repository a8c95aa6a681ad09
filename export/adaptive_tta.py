"""Choose the gate's adaptive-TTA margin on validation images and write it into a bundle's card.

Full TTA runs the classifier once per transform (``none`` + ``hflip``: twice). Its flipped pass can only
change the gate decision of an image whose un-flipped probability p0 is close to the gate threshold t:
if TTA moves probabilities by at most s (|P(TTA) − p0| ≤ s), no image with |p0 − t| ≥ s changes side.
The margin is therefore the largest shift TTA made on the validation images (plus 1e-6), so that no
validation decision changes by construction (checked, and recorded with its source in the card's
``adaptive_tta.chosen_by``); the runtime then runs the flipped pass only on images within the margin
(``triage.cascade.models.CascadeModels.gate``). Images outside the validation set can shift more than
that: ``benchmarks/bench_cascade.py --adaptive-tta`` counts their decision changes against full TTA.

The segmenter's flip is not made adaptive: it changes the mask's pixels (the SEG object and the
overlay), not only the mask-or-no-mask decision, so skipping it would change outputs beyond a decision
margin (docs/speed.md).

Usage:  python -m export.adaptive_tta BUNDLE --validation DIR [DIR ...]
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
from triage.bundle import CARD, load_bundle, seal
from triage.cascade.models import CascadeModels
from triage.errors import TriageError

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
    models = CascadeModels(bundle, "cpu", threads, adaptive=False)
    plain, full = [], []
    for batch in images.batches("classifier"):
        plain.append(models.gate(batch, use_tta=False)[0])
        full.append(models.gate(batch, use_tta=True)[0])
    chosen = choose_gate_margin(np.concatenate(plain), np.concatenate(full), bundle.thresholds.gate)
    block = {
        "gate_margin": chosen.pop("gate_margin"),
        "chosen_by": {
            **images.source,
            **chosen,
            "gate": bundle.thresholds.gate,
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export.adaptive_tta",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("bundle", type=Path, help="the bundle folder (its card is rewritten and resealed)")
    parser.add_argument("--validation", nargs="+", required=True, help="validation DICOM files or folders")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        block = adapt(args.bundle, args.validation, threads=args.threads)
    except (ExportError, ValueError, TriageError) as exc:
        print(f"adaptive_tta: error: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2
    print(json.dumps(block, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
