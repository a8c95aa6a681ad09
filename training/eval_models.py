"""Training runs as a :class:`triage.evaluation.models.Cascade`, so that ``triage evaluate`` measures a run
exactly as it measures a bundle: the runtime's CascadeModels code (TTA, sigmoid, CAM merge) drives the
run's torch modules through the runtime's TorchModel backend.

Give a classifier run and a segmenter (or baseline) run for the cascade; one segmenter/baseline run
alone is evaluated on every image (no gate); a classifier run alone gets the classification sections.
Thresholds come from the runs' cards (``triage train thresholds`` writes them): the gate from the
classifier's, the triplet from the segmenter's; missing ones default to 0.5 ("argmax").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from training.engine import pick_device
from training.models import (
    ClassifierForExport,
    SegmenterForExport,
    saliency_for_export,
)
from training.run_format import RunCard, load_network, read_run_card
from training.torch_backend import TorchModel
from triage.bundle import Bundle, ModelSpec, Normalization, Thresholds
from triage.cascade.models import CascadeModels
from triage.evaluation.models import ARGMAX, Cascade

_OUTPUTS = {"classifier": {"logit": "logit", "cam": "cam"}, "saliency": {"map": "map", "logit": "logit"}}


def run_spec(run: Path, card: RunCard) -> ModelSpec:
    norm = card.normalization
    return ModelSpec(
        role=card.role if card.role in ("classifier", "saliency") else "segmenter",
        path=run / card.checkpoint,
        runtime="onnx",  # not used: the module is called through TorchModel
        sha256="",
        input_name="image",
        input_size=card.input_size,
        channels=card.channels,
        resize=card.resize,  # type: ignore[arg-type]
        normalization=Normalization(
            norm.get("kind", "meanstd"), tuple(norm.get("mean", ())), tuple(norm.get("std", ()))
        ),
        outputs=_OUTPUTS.get(card.role, {"probability": "probability"}),
    )


class TorchCascadeModels(CascadeModels):
    """The runtime's CascadeModels with torch modules in place of ONNX sessions."""

    def __init__(self, bundle: Bundle, classifier: TorchModel | None, segmenter: TorchModel | None) -> None:
        self.bundle = bundle
        self.classifier = classifier  # type: ignore[assignment]
        self.segmenter = segmenter  # type: ignore[assignment]
        self.saliency = None


def _load(run: Path, card: RunCard, device: torch.device) -> torch.nn.Module:
    return load_network(run, card).to(device)


def from_runs(runs: list[Path], device: str = "auto") -> Cascade:
    """A Cascade of 1–3 run folders: a classifier and/or a segmenter (or baseline), and optionally a
    saliency run (its map is measured by the ``saliency`` section). ValueError naming the problem."""
    cards: dict[str, tuple[Path, RunCard]] = {}
    for run in runs:
        card = read_run_card(run)
        role = card.role if card.role in ("classifier", "saliency") else "segmenter"
        if role in cards:
            raise ValueError(f"two {role} runs given ({cards[role][0]} and {run}); give at most one of each")
        cards[role] = (run, card)
    saliency = cards.pop("saliency", None)
    if not cards:
        raise ValueError("a saliency run alone has no cascade to evaluate: add a classifier run")
    dev = pick_device(device)
    cls = cards.get("classifier")
    seg = cards.get("segmenter")
    cls_model = TorchModel(ClassifierForExport(_load(*cls, dev)), ["logit", "cam"], str(dev)) if cls else None  # type: ignore[arg-type]
    seg_model = TorchModel(SegmenterForExport(_load(*seg, dev)), ["probability"], str(dev)) if seg else None  # type: ignore[arg-type]
    cls_spec = run_spec(*cls) if cls else None
    seg_spec = run_spec(*seg) if seg else None
    gate_block = cls[1].thresholds if cls else {}
    seg_block = seg[1].thresholds if seg else {}
    thresholds = Thresholds(
        gate=float(gate_block.get("gate", ARGMAX.gate)),
        top=float(seg_block.get("top", ARGMAX.top)),
        min_area=int(seg_block.get("min_area", ARGMAX.min_area)),
        bottom=float(seg_block.get("bottom", ARGMAX.bottom)),
        min_component=int(seg_block.get("min_component", ARGMAX.min_component)),
        chosen_by=dict(seg_block.get("chosen_by") or gate_block.get("chosen_by") or ARGMAX.chosen_by),
    )
    provenance: dict[str, Any] = {
        role: {"run": str(run), **card.provenance} for role, (run, card) in cards.items()
    }
    tta = tuple((seg or cls)[1].provenance.get("tta", ["none", "hflip"]))  # type: ignore[index]
    any_spec = cls_spec or seg_spec
    assert any_spec is not None
    bundle = Bundle(
        root=runs[0],
        name="+".join(r.name for r in runs),
        version="run",
        content_hash="",
        classifier=cls_spec or any_spec,
        segmenter=seg_spec or any_spec,
        saliency=run_spec(*saliency) if saliency else None,
        tta=tta,
        thresholds=thresholds,
        provenance=provenance,
        card={},
    )
    label = " + ".join(f"{card.role} run {run}" for run, card in cards.values())
    models = TorchCascadeModels(bundle, cls_model, seg_model)
    if saliency is not None:
        card = saliency[1]
        module = _load(*saliency, dev)
        models.saliency = TorchModel(saliency_for_export(module, card.provenance),  # type: ignore[arg-type]
                                     ["map", "logit"], str(dev))
        provenance["saliency"] = {"run": str(saliency[0]), **card.provenance}
        label += f" + saliency run {saliency[0]}"
    return Cascade(
        label=label,
        kind="runs",
        models=models,
        classifier=cls_spec,
        segmenter=seg_spec,
        thresholds=thresholds,
        tta=tta,
        provenance=provenance,
    )
