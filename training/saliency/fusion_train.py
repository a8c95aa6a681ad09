"""Stage 3 of seed 004's dual-encoder model (:mod:`training.fusion`): ``triage train saliency
--dual-encoder CLASSIFIER_RUN``.

After the saliency U-Net has trained (stage 2, :func:`training.saliency.train.train_saliency`), a
:class:`~training.fusion.FusionHead` learns the label from the frozen classifier's features and the frozen
U-Net's last decoder features, with the same trainer (fastai ``Learner``, one-cycle, checkpoints, resume)
on the same training and validation images, into ``RUN/fusion/``. Validation reports the fused head's AUC
(the selection metric) and, beside it, the frozen classifier's own AUC on the same images.

The classifier run must read images as the saliency run does (input size, channels, resize,
normalization): the fused graph has one input. If the classifier trained on some of this run's
validation images (compared by image ID with the classifier run's ``data.json``), the fused validation
AUC is optimistic; that is logged and recorded in the run card (``validation_may_be_optimistic``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from safetensors.torch import load_file
from torch import nn

from training.config import TrainConfig
from training.engine import FitResult, Trainer
from training.fusion import DualEncoderNet
from training.losses import Batch, Outputs
from training.models import CamClassifier, SaliencyNet
from training.run import DATA_JSON
from training.run_format import RunCard, load_network, read_run_card
from training.tasks import Task
from triage import metrics

logger = logging.getLogger(__name__)

FOLDER = "fusion"


@dataclass(frozen=True)
class DualEncoder:
    """``--dual-encoder RUN --fusion-epochs E --fusion-hidden H``: what stage 3 trains."""

    classifier_run: Path
    epochs: int = 5
    hidden: int = 32

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.hidden < 1:
            raise ValueError(
                f"--fusion-epochs and --fusion-hidden must be at least 1, got {self.epochs}, {self.hidden}"
            )


@dataclass(frozen=True)
class FusionTask(Task):
    """The fused head's task: BCE on the fused logit; scores (N, 2) = (fused, the classifier's own)."""

    role: str = "saliency"

    def encoder(self, model: nn.Module) -> nn.Module:
        assert isinstance(model, DualEncoderNet)
        return model.frozen()

    def forward(self, model: nn.Module, batch: Batch) -> Outputs:
        assert isinstance(model, DualEncoderNet)
        _, logit, own, _ = model.forward_all(batch["image"])
        return {"logit": logit, "own": own}

    def loss_inputs(self, outputs: Outputs, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        return outputs["logit"], batch["label"]

    def score(self, outputs: Outputs) -> NDArray[np.float32]:
        both = torch.cat([outputs["logit"].reshape(-1, 1), outputs["own"].reshape(-1, 1)], dim=1)
        out: NDArray[np.float32] = torch.sigmoid(both.float()).detach().cpu().numpy()
        return out

    @property
    def validation_keys(self) -> tuple[str, ...]:
        return ("label",)

    def validation_metrics(self, scores: list[NDArray[np.float32]], batches: list[Batch]) -> dict[str, float]:
        p = np.concatenate(scores)
        y = np.concatenate([b["label"].numpy().reshape(-1) for b in batches]) > 0.5
        if y.all() or not y.any():
            return {"auc": float("nan"), "classifier_auc": float("nan")}
        return {"auc": metrics.roc_auc(p[:, 0], y), "classifier_auc": metrics.roc_auc(p[:, 1], y)}


def contract(card_or_config: RunCard | TrainConfig) -> dict[str, Any]:
    """The input contract: what must agree for two models to read one input tensor."""
    c = card_or_config
    channels = c.channels if isinstance(c, RunCard) else c.arch.in_chans
    return {
        "input_size": list(c.input_size),
        "channels": channels,
        "resize": c.resize,
        "normalization": dict(c.normalization),
    }


def load_classifier(path: Path, config: TrainConfig) -> tuple[CamClassifier, RunCard]:
    """The classifier run at ``path`` (eval mode), checked against the saliency run's input contract;
    ValueError with a one-line reason."""
    card = read_run_card(path)
    if card.role != "classifier":
        raise ValueError(
            f"--dual-encoder {path}: a {card.role} run; give a classifier run (triage train classifier)"
        )
    ours, theirs = contract(config), contract(card)
    differ = [k for k in ours if ours[k] != theirs[k]]
    if differ:
        k = differ[0]
        hint = "arch.in_chans" if k == "channels" else k
        value = json.dumps(theirs[k], separators=(",", ":"))
        raise ValueError(
            f"--dual-encoder {path}: the classifier reads images with {k} {theirs[k]}, the saliency run with "
            f"{ours[k]}; the fused model has one input: train the saliency run with --set '{hint}={value}'"
        )
    try:
        model = load_network(path, card)
    except (ValueError, RuntimeError, OSError) as exc:
        raise ValueError(f"--dual-encoder {path}: {exc}") from exc
    if not isinstance(model, CamClassifier):
        raise ValueError(f"--dual-encoder {path}: the run's network is not a CAM classifier")
    return model, card


def data_overlap(classifier_run: Path, val_ids: list[str]) -> str | None:
    """Why the fused validation AUC may be optimistic — the classifier trained on some of this run's
    validation images (by image ID, from the classifier run's ``data.json``), or that cannot be checked —
    or None."""
    if not val_ids:
        return None
    record = classifier_run / DATA_JSON
    try:
        trained = set(json.loads(record.read_text(encoding="utf-8"))["train"])
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        return f"{record} is missing or unreadable, so the classifier's training images are unknown"
    seen = len(trained & set(val_ids))
    if not seen:
        return None
    return f"the classifier trained on {seen} of this run's {len(val_ids)} validation images"


def train_fusion(
    config: TrainConfig,
    stage: DualEncoder,
    saliency: SaliencyNet,
    classifier: CamClassifier,
    datasets: tuple[Any, list[int], Any, list[int]],
    run: Path,
    *,
    resume: bool,
    progress: bool,
) -> tuple[DualEncoderNet, FitResult, TrainConfig]:
    """Train the head into ``run``/fusion; the fused model with its selected weights loaded."""
    train_set, train_rows, val_set, val_rows = datasets
    cfg = dataclasses.replace(config, epochs=stage.epochs, freeze_epochs=0, extra_losses=())
    torch.manual_seed(cfg.seed)
    model = DualEncoderNet(classifier, saliency.eval(), stage.hidden)
    folder = run / FOLDER
    trainer = Trainer(
        cfg, FusionTask(), model, train_set, train_rows, val_set, val_rows, folder, progress=progress
    )
    result = trainer.fit(resume=resume)
    checkpoint = "best.safetensors" if cfg.select == "best" else "last.safetensors"
    model.load_state_dict(load_file(str(folder / checkpoint)))
    (folder / "fit.json").write_text(json.dumps(dataclasses.asdict(result)) + "\n", encoding="utf-8")
    return model.eval(), result, cfg


def provenance(
    stage: DualEncoder, classifier: RunCard, result: FitResult, cfg: TrainConfig, overlap: str | None
) -> dict[str, Any]:
    """The run card's ``dual_encoder`` record: enough to rebuild the fused network and to trace stage 1."""
    best = next((h for h in result.history if h.get("epoch") == result.best_epoch), {})
    return {
        "classifier_run": str(stage.classifier_run.resolve()),
        "classifier_arch": classifier.arch.to_dict(),
        "classifier_data": classifier.provenance.get("data"),
        "classifier_fold": classifier.provenance.get("fold"),
        "hidden": stage.hidden,
        "epochs": stage.epochs,
        "lr": cfg.lr,
        "fit": {
            "best_epoch": result.best_epoch,
            "best_auc": result.best_metric,
            "classifier_auc_same_images": best.get("classifier_auc"),
            "seconds": round(result.seconds, 1),
        },
        "validation_may_be_optimistic": overlap,
    }
