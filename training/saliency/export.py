"""Export a saliency run to ONNX and add it to a model bundle as the optional ``saliency`` model.

Until ``triage export`` folds this in, ``triage export-saliency --run RUN --bundle BUNDLE`` does it:

* ``saliency.onnx``: :class:`training.models.SaliencyForExport` — graph input ``image`` (N, C, H, W)
  with a dynamic batch axis; outputs ``saliency`` (N, 1, H, W) in [0, 1] and ``logit`` (N, 1);
* the card's ``models.saliency`` entry (the bundle contract of :mod:`triage.bundle`): file, runtime,
  input contract copied from the run's card (size, channels, resize, normalisation), outputs
  ``{"map": "saliency", "logit": "logit"}``; then the bundle is resealed (hashes).

Parity: onnxruntime's outputs are checked against torch on random inputs before the bundle is touched
(max abs difference ≤ ``tolerance``); a failed check leaves the bundle unchanged.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from training.models import SaliencyForExport, SaliencyNet, build_model
from training.run_format import read_run_card
from triage.bundle import CARD, load_bundle, seal

OPSET = 17
FILE = "saliency.onnx"
OUTPUTS = {"map": "saliency", "logit": "logit"}


def load_saliency_run(run: Path) -> tuple[SaliencyNet, Any]:
    card = read_run_card(run)
    if card.role != "saliency":
        raise ValueError(f"{run} is a {card.role} run, not a saliency run (triage train saliency)")
    model = build_model(card.arch)
    assert isinstance(model, SaliencyNet)
    path = run / card.checkpoint
    if not path.is_file():
        raise ValueError(f"{run}: the checkpoint {card.checkpoint} named by model.json is missing")
    model.load_state_dict(load_file(str(path)))
    return model.eval(), card


def export_onnx(
    model: SaliencyNet,
    path: Path,
    input_size: tuple[int, int],
    channels: int,
    map_activation: str = "sigmoid",
    tolerance: float = 1e-3,
) -> float:
    """Write the ONNX graph to ``path``; returns the max abs torch–onnxruntime difference (checked)."""
    import onnxruntime as ort

    wrapper = SaliencyForExport(model, map_activation).eval()  # type: ignore[arg-type]
    x = torch.randn(2, channels, *input_size, generator=torch.Generator().manual_seed(0))
    # The TorchScript exporter (dynamo=False): the torch.export one needs onnxscript, not installed here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            wrapper,
            (x,),
            str(path),
            input_names=["image"],
            output_names=[OUTPUTS["map"], OUTPUTS["logit"]],
            dynamic_axes={"image": {0: "N"}, OUTPUTS["map"]: {0: "N"}, OUTPUTS["logit"]: {0: "N"}},
            opset_version=OPSET,
            dynamo=False,
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probe = torch.randn(3, channels, *input_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = [t.numpy() for t in wrapper(probe)]
    got = session.run([OUTPUTS["map"], OUTPUTS["logit"]], {"image": probe.numpy()})
    diff = max(float(np.abs(a - b).max()) for a, b in zip(expected, got, strict=True))
    if diff > tolerance:
        raise ValueError(f"ONNX export differs from torch by {diff:.3g} (> {tolerance}); not written")
    return diff


def add_to_bundle(run: Path, bundle: Path) -> dict[str, Any]:
    """Export ``run`` into ``bundle`` as its saliency model and reseal; returns the card entry."""
    model, card = load_saliency_run(run)
    load_bundle(bundle)  # the bundle must be valid before we touch it
    activation = str(card.provenance.get("map_activation", "sigmoid"))
    with tempfile.TemporaryDirectory(dir=bundle) as tmp:
        onnx_path = Path(tmp) / FILE
        diff = export_onnx(model, onnx_path, card.input_size, card.channels, activation)
        entry = {
            "file": FILE,
            "runtime": "onnx",
            "input_name": "image",
            "input_size": list(card.input_size),
            "channels": card.channels,
            "resize": card.resize,
            "normalization": card.normalization,
            "outputs": dict(OUTPUTS),
            "map_activation": activation,
            "provenance": {
                "run": str(run.resolve()),
                "target": card.provenance.get("target"),
                "parity_max_abs_diff": diff,
            },
        }
        card_path = bundle / CARD
        raw = json.loads(card_path.read_text(encoding="utf-8"))
        raw["models"]["saliency"] = entry
        shutil.move(str(onnx_path), bundle / FILE)
    tmp_card = card_path.with_suffix(".json.tmp")
    tmp_card.write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    tmp_card.replace(card_path)
    seal(bundle)
    load_bundle(bundle)
    return entry
