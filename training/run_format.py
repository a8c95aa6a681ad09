"""The run folder: what `triage train` writes and `triage export` reads (format ``triage-run/1``).

::

    RUN/model.json          this module's RunCard: role, arch (ArchSpec), input contract, checkpoint
    RUN/best.safetensors    the weights to export (safetensors state dict of CamClassifier / Segmenter)
    RUN/last.safetensors    the latest weights (resume)
    RUN/...                 anything else training keeps (config, logs, out-of-fold predictions)

The input contract (``input_size``, ``channels``, ``resize``, ``normalization``) has exactly the meaning
it has in a bundle's card (:mod:`triage.bundle`): training must prepare its inputs with the runtime's own
code (:func:`triage.cascade.preprocess.fit` and :func:`~triage.cascade.preprocess.normalise`) so that
what the model saw in training is what it sees in a hospital.

``thresholds`` (optional) holds the decision thresholds chosen for this run, in the card's format
(``gate`` for a classifier run; ``top``, ``min_area``, ``bottom``, ``min_component`` for a segmenter
run, ``min_area``/``min_component`` in pixels of the segmenter's grid), each with ``chosen_by``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from torch import nn

from training.models import ArchSpec, build_model

FORMAT = "triage-run/1"
CARD = "model.json"
ROLES = ("classifier", "segmenter", "baseline", "saliency")


@dataclass(frozen=True)
class RunCard:
    role: str  # classifier | segmenter (positive-only) | baseline (all images) | saliency
    arch: ArchSpec
    input_size: tuple[int, int]  # (height, width)
    channels: int = 1
    resize: str = "letterbox"
    normalization: dict[str, Any] = field(
        default_factory=lambda: {"kind": "meanstd", "mean": [0.5], "std": [0.25]}
    )
    checkpoint: str = "best.safetensors"
    thresholds: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "role": self.role,
            "arch": self.arch.to_dict(),
            "input_size": list(self.input_size),
            "channels": self.channels,
            "resize": self.resize,
            "normalization": self.normalization,
            "checkpoint": self.checkpoint,
            "thresholds": self.thresholds,
            "provenance": self.provenance,
        }


def write_run_card(run: Path, card: RunCard) -> Path:
    path = Path(run) / CARD
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(card.to_dict(), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def read_run_card(run: Path) -> RunCard:
    """The run's card; ValueError with a one-line reason when the folder is not a usable run."""
    path = Path(run) / CARD
    if not path.is_file():
        raise ValueError(f"{run}: no {CARD}; not a training run folder (triage train writes one)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not readable JSON ({exc})") from exc
    if raw.get("format") != FORMAT:
        raise ValueError(f"{path}: format must be {FORMAT!r}, got {raw.get('format')!r}")
    if raw.get("role") not in ROLES:
        raise ValueError(f"{path}: role must be one of {ROLES}, got {raw.get('role')!r}")
    try:
        size = [int(v) for v in raw["input_size"]]
        return RunCard(
            role=raw["role"],
            arch=ArchSpec.from_dict(raw["arch"]),
            input_size=(size[0], size[1]),
            channels=int(raw.get("channels", 1)),
            resize=str(raw.get("resize", "letterbox")),
            normalization=dict(raw.get("normalization", {})),
            checkpoint=str(raw.get("checkpoint", "best.safetensors")),
            thresholds=dict(raw.get("thresholds", {})),
            provenance=dict(raw.get("provenance", {})),
        )
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: malformed ({type(exc).__name__}: {exc})") from exc


def build_network(card: RunCard) -> nn.Module:
    """The network (random weights) whose state dict the run's checkpoint holds: the card's ``arch``, or,
    for a dual-encoder saliency run (``provenance.dual_encoder``), the fused network of
    :mod:`training.fusion`. ValueError naming a bad architecture."""
    if card.role == "saliency" and "dual_encoder" in card.provenance:
        from training.fusion import build_dual

        try:
            return build_dual(card)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"the run card's dual_encoder record is incomplete ({exc})") from exc
    return build_model(card.arch)


def load_network(run: Path, card: RunCard) -> nn.Module:
    """:func:`build_network` with the checkpoint the card names loaded (strict), in eval mode on the CPU;
    ValueError when the checkpoint is missing, RuntimeError when it does not fit the architecture."""
    model = build_network(card)
    path = Path(run) / card.checkpoint
    if not path.is_file():
        raise ValueError(f"{run}: the checkpoint {card.checkpoint} named by model.json is missing")
    model.load_state_dict(load_file(str(path)))
    return model.eval()
