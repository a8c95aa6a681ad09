"""Validation and calibration images: DICOM files read and prepared by the runtime's own code.

A folder given by the user is expanded like ``triage predict`` inputs (files, folders, globs) and every
file goes through :func:`triage.cascade.items.load_item` (the one DICOM reader, then the card's
preprocessing), so the parity check and the INT8 calibration see exactly what inference will see.

Without a folder, a small synthetic set is made on the fly by the phantom (``triage synth``): the
settings are :data:`SYNTHETIC_VALIDATION` / :data:`SYNTHETIC_CALIBRATION`, recorded in the card.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import ExportError
from triage.bundle import Bundle
from triage.cascade.items import Item, load_item
from triage.io.dicom import ReadPolicy
from triage.io.inputs import expand_inputs
from triage.synth.dataset import SynthRequest, synthesize

# Documented defaults (docs/export.md): a balanced set so that both gate decisions and non-empty masks occur.
SYNTHETIC_VALIDATION = {"studies": 24, "size": 512, "positive_fraction": 0.5, "seed": 20261}
SYNTHETIC_CALIBRATION = {"studies": 32, "size": 512, "positive_fraction": 0.5, "seed": 20262}


@dataclass
class ImageSet:
    """Prepared items (read without error) and a description of where they came from."""

    items: list[Item]
    source: dict[str, Any]

    def batches(self, role: str, size: int = 8) -> list[np.ndarray]:
        """The model inputs of ``role`` (classifier, segmenter or saliency), in batches of ``size``."""
        xs = [self.input(it, role) for it in self.items]
        return [np.stack(xs[i : i + size]) for i in range(0, len(xs), size)]

    @staticmethod
    def input(item: Item, role: str) -> np.ndarray:
        """The item's input to the ``role`` model, prepared by the runtime for that model's contract."""
        prepared = {"segmenter": item.seg_input, "saliency": item.sal_input}.get(role, item.gate_input)
        if prepared is None:
            raise ExportError(f"{item.input}: no {role} input was prepared (the bundle has no {role} model)")
        return prepared.x


def synthetic(folder: Path, settings: dict[str, Any]) -> Path:
    """Write the phantom set described by ``settings`` to ``folder`` (one worker: deterministic, quiet)."""
    req = SynthRequest(
        folder, settings["studies"], settings["positive_fraction"], settings["size"], settings["seed"]
    )
    synthesize(req, workers=1)
    return folder


def load_images(
    paths: list[str], bundle: Bundle, *, what: str, source: dict[str, Any], saliency_role: bool = False
) -> ImageSet:
    """Read + prepare every file; ExportError naming ``what`` when none of them is usable."""
    files, missing = expand_inputs(paths)
    if not files and missing:
        raise ExportError(f"{what} {paths[0]}: {missing[0][1].message}")
    items = [load_item(str(p), bundle, ReadPolicy()) for p in files]
    good = [it for it in items if it.error is None]
    if not good:
        codes = Counter(it.error.code.value for it in items if it.error is not None)
        detail = ", ".join(f"{n} {code}" for code, n in codes.most_common()) or "no files"
        raise ExportError(
            f"{what} {', '.join(paths)}: no readable radiograph among {len(files)} file(s) ({detail})"
        )
    skipped = len(items) - len(good)
    described = {**source, "images": len(good), "unreadable_skipped": skipped}
    return ImageSet(good, described)


def image_set(
    folder: Path | None, bundle: Bundle, workdir: Path, *, what: str, defaults: dict[str, Any]
) -> ImageSet:
    """The user's ``folder``, or the documented synthetic set made in ``workdir``."""
    if folder is not None:
        return load_images([str(folder)], bundle, what=what, source={"kind": "folder", "path": str(folder)})
    made = synthetic(workdir / what.replace(" ", "-"), defaults)
    return load_images(
        [str(made / "dicom-images-train")],
        bundle,
        what=what,
        source={"kind": "synthetic (triage synth)", **defaults},
    )
