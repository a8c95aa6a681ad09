"""Presets of the saliency U-Net (role ``saliency``), in the trainer's :class:`TrainConfig`.

* ``seed``: the source's generator (seeds.md C) — smp U-Net with an EfficientNet-b0 encoder and a
  classification head, 224 px; meant for a GPU.
* ``small``: ResNet-18 encoder at 128 px, for a 2-core CPU.
* ``tiny``: seconds, for tests.

All: BCE on the head's logit, plus the ``saliency_map`` term (:mod:`training.saliency.terms`) with
``kind`` bce, α = 1 (decoder only) and weight 1 (γ = ½ in the source's γ·L_cls + (1 − γ)·L_map); Adam,
one-cycle, balanced batches; the trainer's half-strength augmentation (``LIGHT_AUGMENT``: at full strength
models from random weights did not learn on a 2-core budget), without Cutout (it would punch holes the
target does not have); ``seed`` uses the thesis's full-strength set, still without Cutout.
"""

from __future__ import annotations

from typing import Any

from training.config import LIGHT_AUGMENT, AugmentConfig, TrainConfig
from training.models import ArchSpec

TINY_SAL = ArchSpec("saliency", "tu-resnet10t", options={"encoder_depth": 3, "decoder_channels": [32, 16, 8]})
SMALL_SAL = ArchSpec("saliency", "resnet18", options={"decoder_channels": [128, 64, 32, 16, 16]})
SEED_SAL = ArchSpec("saliency", "efficientnet-b0")
DEFAULT_MAP_TERM: dict[str, Any] = {"name": "saliency_map", "weight": 1.0, "kind": "bce", "alpha": 1.0}


def saliency_preset(name: str) -> TrainConfig:
    common: dict[str, Any] = {
        "role": "saliency",
        "preset": name,
        "loss": "bce",
        "optimizer": "adam",
        "balance": "sampler",
        "positive_fraction": 0.5,
        "weight_decay": 1e-4,
        "extra_losses": (dict(DEFAULT_MAP_TERM),),
        "augment": LIGHT_AUGMENT,
    }
    if name == "seed":
        return TrainConfig(
            **{**common, "augment": AugmentConfig()},
            arch=SEED_SAL,
            input_size=(224, 224),
            epochs=30,
            batch_size=16,
            lr=1e-3,
        )
    if name == "small":
        return TrainConfig(**common, arch=SMALL_SAL, input_size=(128, 128), epochs=10, batch_size=16, lr=2e-3)
    return TrainConfig(**common, arch=TINY_SAL, input_size=(64, 64), epochs=2, batch_size=8, lr=3e-3)
