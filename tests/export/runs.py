"""Tiny training runs for export tests: a RunCard and random-init weights (safetensors), as `triage train`
would write them, with tiny timm / smp networks at 64 px."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from training.models import ArchSpec, build_model
from training.run_format import RunCard, write_run_card

TINY_CLS = ArchSpec("classifier", "resnet10t")
TINY_SEG = ArchSpec(
    "segmenter", "tu-resnet10t", options={"encoder_depth": 3, "decoder_channels": [32, 16, 8]}
)
SIZE = 64
NORM = {"kind": "meanstd", "mean": [0.5], "std": [0.25]}


def make_run(
    folder: Path,
    role: str,
    *,
    arch: ArchSpec | None = None,
    size: int = SIZE,
    channels: int = 1,
    thresholds: dict[str, Any] | None = None,
    seed: int = 0,
    checkpoint: bool = True,
    normalization: dict[str, Any] | None = None,
) -> Path:
    """Write a run folder with random weights for ``role`` (classifier, segmenter, baseline)."""
    spec = arch or (TINY_CLS if role == "classifier" else TINY_SEG)
    if channels != spec.in_chans:
        spec = ArchSpec(spec.kind, spec.backbone, spec.decoder, channels, spec.options)
    torch.manual_seed(seed)
    model = build_model(spec)
    if checkpoint:
        folder.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "best.safetensors")
        )
    card = RunCard(
        role=role,
        arch=spec,
        input_size=(size, size),
        channels=channels,
        normalization=normalization or NORM,
        thresholds=thresholds or {},
        provenance={"kind": "random init (test fixture)", "seed": seed},
    )
    write_run_card(folder, card)
    return folder


def make_pair(
    root: Path, *, gate: float = 0.5, triplet: bool = True, normalization: dict[str, Any] | None = None
) -> tuple[Path, Path]:
    """A classifier run (with a gate threshold) and a segmenter run (with a triplet) under ``root``."""
    cls = make_run(
        root / "cls",
        "classifier",
        thresholds={"gate": gate, "chosen_by": {"data": "test", "metric": "none", "value": None}},
        normalization=normalization,
    )
    seg_th = (
        {
            "top": 0.6,
            "min_area": 10,
            "bottom": 0.4,
            "min_component": 4,
            "chosen_by": {"data": "test", "metric": "dice per image", "value": 0.5},
        }
        if triplet
        else {}
    )
    seg = make_run(root / "seg", "segmenter", thresholds=seg_th, seed=1, normalization=normalization)
    return cls, seg
