"""``triage train saliency``: the saliency U-Net (an smp U-Net with a classification head) trained against
target heatmaps, with the trainer of :mod:`training.engine` (one-cycle, logs, checkpoints, resume).

Objective (seeds.md C; :mod:`training.saliency.losses`)::

    L = BCE(logit, label) + w · [α · L_map(decoder, T) + (1 − α) · L_map(CAM, T)]

which is the source's γ·L_cls + (1 − γ)·L_map scaled by 1/γ, with γ = 1/(1 + w) (``--cls-weight γ``
sets w = (1 − γ)/γ). ``--map-loss`` bce | kl | mse. ``--staged E``: for the first E epochs the encoder is
frozen (BatchNorm layers excepted) and only the decoder and the head learn against the target — the
source's "frozen encoder + decoder" stage; then everything trains for ``--epochs``.

The run folder is a ``triage-run/1`` run with role ``saliency`` (:mod:`training.run_format`); the card's
provenance records ``target`` and ``map_activation`` (``spatial_softmax`` after KL training, else
``sigmoid``) for the export (:class:`training.models.SaliencyForExport`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from training.config import TrainConfig, write_config
from training.data import model_spec
from training.engine import STATE, FitResult, Trainer, pick_device
from training.models import SaliencyNet, build_model, load_init_weights
from training.prepare import DataError, assign_folds, split
from training.run import (
    DATA_JSON,
    FIT_JSON,
    RunRequest,
    _data_record,
    check_problems,
    git_commit,
    prepare_for,
)
from training.run_format import CARD, RunCard, write_run_card
from training.saliency import fusion_train
from training.saliency.fusion_train import DualEncoder
from training.saliency.targets import TargetError, read_gaze_csv
from training.saliency.task import SaliencyDataset, SaliencyTask, TargetSpec
from triage import __version__

logger = logging.getLogger(__name__)


def map_activation(config: TrainConfig) -> str:
    """How the export turns the decoder's logits into a [0, 1] map: see the module docstring."""
    for term in config.extra_losses:
        if term.get("name") == "saliency_map":
            return "spatial_softmax" if term.get("kind") == "kl" else "sigmoid"
    return "sigmoid"


def gaze_target(grids: Any, rows: list[int], csv_path: Path, sigma: float) -> TargetSpec:
    """Read and validate the fixation CSV against the source image sizes (one-line TargetError)."""
    sizes = {}
    for r in rows:
        src = grids.items[r].get("geometry")
        if src:
            sizes[grids.ids[r]] = (int(src[0][0]), int(src[0][1]))
    return TargetSpec("gaze", sigma, read_gaze_csv(csv_path, sizes))


def _fit_stage(trainer: Trainer, run: Path, resume: bool) -> FitResult:
    """The saliency U-Net's fit, or, when resuming a run whose U-Net finished (``fit.json`` written, no
    ``state.pt``; a dual-encoder run stopped in stage 3), that fit's record."""
    if resume and (run / FIT_JSON).is_file() and not (run / STATE).exists():
        logger.info("%s: the saliency U-Net has finished; resuming after it", run)
        return FitResult(**json.loads((run / FIT_JSON).read_text(encoding="utf-8")))
    result = trainer.fit(resume=resume)
    (run / FIT_JSON).write_text(json.dumps(dataclasses.asdict(result)) + "\n", encoding="utf-8")
    return result


def train_saliency(
    config: TrainConfig,
    req: RunRequest,
    target: TargetSpec,
    gaze_csv: Path | None = None,
    dual: DualEncoder | None = None,
) -> Path:
    """Train one saliency run into ``req.out`` (``req.fold``: an index or "full"). Returns the run folder.

    With ``dual``, stage 3 of the dual-encoder model follows (:mod:`training.saliency.fusion_train`): the
    run's checkpoint is then the fused network (``fusion/best.safetensors``) and its card records the
    classifier run it was built on."""
    run = req.out
    if (run / CARD).is_file() and not (run / STATE).exists():
        if req.resume:
            return run
        raise DataError(f"{run} holds a finished run; choose another --out")
    if run.exists() and any(run.iterdir()) and not req.resume:
        raise DataError(f"{run} is not empty; pass --resume to continue that run, or choose another --out")
    stage1 = fusion_train.load_classifier(dual.classifier_run, config) if dual is not None else None
    prep = prepare_for(config, req)
    check_problems(prep, req, run)
    fold = None if req.fold == "full" else int(req.fold)
    folds = assign_folds(prep, req.folds, req.data) if fold is not None else None
    sp = split(prep, "saliency", folds, fold, req.folds)
    g = prep.grids
    if target.kind == "gaze":
        if gaze_csv is None:
            raise TargetError("--target gaze needs --gaze-csv FILE")
        target = gaze_target(g, prep.rows, gaze_csv, target.sigma)
    spec = model_spec(config)
    train_set = SaliencyDataset(g, spec, target, config.augment, config.seed)
    with_target = sum(train_set.has_target(r) for r in sp.train)
    if with_target == 0:
        raise TargetError(f"none of the {len(sp.train)} training images has a {target.kind} target")
    val_set = SaliencyDataset(g, spec, target, None, config.seed) if sp.val else None
    run.mkdir(parents=True, exist_ok=True)
    record = _data_record(prep, sp, req, fold)
    record["target"] = {
        "kind": target.kind,
        "sigma": target.sigma,
        "images_with_target": with_target,
        "gaze_csv": str(gaze_csv) if gaze_csv else None,
    }
    (run / DATA_JSON).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    write_config(run / "config.yaml", config)
    torch.manual_seed(config.seed)
    model = build_model(config.arch)
    if req.init is not None and not (run / STATE).exists():
        missing = load_init_weights(model, req.init)
        logger.info("--init %s: %d parameters not in the file", req.init, len(missing))
    trainer = Trainer(
        config, SaliencyTask(), model, train_set, sp.train, val_set, sp.val, run, progress=req.progress
    )
    result = _fit_stage(trainer, run, req.resume)
    checkpoint = "best.safetensors" if config.select == "best" else "last.safetensors"
    model.load_state_dict(load_file(str(run / checkpoint)))
    fused = None
    if dual is not None and stage1 is not None:
        cls_model, cls_card = stage1
        assert isinstance(model, SaliencyNet)
        overlap = fusion_train.data_overlap(dual.classifier_run, [g.ids[i] for i in sp.val])
        if overlap:
            logger.warning("--dual-encoder: %s; the fused validation AUC may be optimistic", overlap)
        sets = (train_set, list(sp.train), val_set, list(sp.val))
        _, fit3, cfg3 = fusion_train.train_fusion(
            config, dual, model, cls_model, sets, run, resume=req.resume, progress=req.progress
        )
        fused = fusion_train.provenance(dual, cls_card, fit3, cfg3, overlap)
        checkpoint = f"{fusion_train.FOLDER}/{checkpoint}"
    provenance = {
        "data": str(req.data.resolve()),
        "train_images": len(sp.train),
        "train_positives": int(sum(g.labels[i] for i in sp.train)),
        "val_images": len(sp.val),
        "fold": fold if fold is not None else "full",
        "preset": config.preset,
        "epochs": config.total_epochs,
        "staged_epochs": config.freeze_epochs,
        "seed": config.seed,
        "target": record["target"],
        "map_activation": map_activation(config),
        "losses": [dict(t) for t in config.extra_losses],
        "fit": {
            "best_epoch": result.best_epoch,
            "best_auc": result.best_metric,
            "seconds": round(result.seconds, 1),
            "train_images_per_s": round(result.images_per_s, 2),
        },
        **({"dual_encoder": fused} if fused is not None else {}),
        "git_commit": git_commit(),
        "triage_version": __version__,
        "torch": torch.__version__,
        "device": pick_device(config.device).type,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_run_card(
        run,
        RunCard(
            role="saliency",
            arch=config.arch,
            input_size=config.input_size,
            channels=config.arch.in_chans,
            resize=config.resize,
            normalization=dict(config.normalization),
            checkpoint=checkpoint,
            provenance=provenance,
        ),
    )
    return run
