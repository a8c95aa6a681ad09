"""The bodies of ``triage train saliency``, ``triage shortcut-experiment`` and of the saliency options of
``triage train classifier`` (the Typer commands live in training/cli.py, their options in
training/saliency/options.py). Each command returns the exit status: 0 done, 2 a usage or data error (one
line on stderr), 130 interrupted."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from training.config import ConfigError, TrainConfig, resolve
from training.console import error, setup_logging
from training.engine import Interrupted
from training.run import RunRequest, parse_fold
from training.saliency.heatmap_loss import HeatmapLossConfig
from training.saliency.options import METHODS, SaliencyOptions
from training.saliency.targets import TargetError
from training.saliency.terms import DataCheckError

if TYPE_CHECKING:
    from training.options import RunOptions
    from training.saliency.options import DualEncoderOptions, SaliencyTarget, ShortcutOptions


def apply_saliency_options(cfg: TrainConfig, options: SaliencyOptions) -> TrainConfig:
    """``cfg`` with the heatmap loss and/or the corruption augmentation added; ValueError (one line) for a
    bad value, including a ``--heatmap-layer`` the network does not have (checked by building it)."""
    o = options
    if o.heatmap_layer is not None and o.heatmap_loss is None:
        raise ValueError("--heatmap-layer needs --heatmap-loss")
    if o.heatmap_loss is not None:
        if cfg.role != "classifier":
            raise ValueError(
                f"--heatmap-loss trains a classifier's attribution; not available for {cfg.role}"
            )
        if o.heatmap_loss not in METHODS:
            raise ValueError(f"--heatmap-loss must be one of {list(METHODS)}, got {o.heatmap_loss!r}")
        HeatmapLossConfig(
            method=o.heatmap_loss,
            weight=o.heatmap_weight,
            which=o.heatmap_class,
            mode=o.heatmap_mode,
            region=o.heatmap_region,
            layer=o.heatmap_layer,
        )
        if o.heatmap_layer is not None:
            from training.models import build_model
            from training.saliency.attribution import resolve_layer

            resolve_layer(build_model(cfg.arch), o.heatmap_layer)
        term = {
            "name": "heatmap",
            "weight": o.heatmap_weight,
            "method": o.heatmap_loss,
            "which": o.heatmap_class,
            "mode": o.heatmap_mode,
            "region": o.heatmap_region,
            "layer": o.heatmap_layer,
        }
        cfg = dataclasses.replace(cfg, extra_losses=(*cfg.extra_losses, term))
    if o.corruption_augment:
        if not 0.0 < o.corruption_augment <= 1.0:
            raise ValueError(f"--corruption-augment is a probability in (0, 1], got {o.corruption_augment}")
        extra = (*cfg.augment.extra, {"name": "corruption", "p": o.corruption_augment})
        cfg = dataclasses.replace(cfg, augment=dataclasses.replace(cfg.augment, extra=extra))
    return cfg


def train_saliency_command(
    data: Path,
    out: Path,
    preset: str,
    fold: str,
    run: RunOptions,
    target: SaliencyTarget,
    corruption_augment: float,
    dual: DualEncoderOptions | None = None,
) -> int:
    from training.saliency.fusion_train import DualEncoder
    from training.saliency.task import TargetSpec
    from training.saliency.train import train_saliency

    setup_logging(run.quiet)
    command = "train saliency"
    t = target
    try:
        if not 0.0 < t.cls_weight <= 1.0:
            raise ValueError(f"--cls-weight must be in (0, 1], got {t.cls_weight}")
        if t.target == "gaze" and t.gaze_csv is None:
            raise ValueError("--target gaze needs --gaze-csv FILE")
        term = {
            "name": "saliency_map",
            "weight": (1.0 - t.cls_weight) / t.cls_weight,
            "kind": t.map_loss,
            "alpha": t.alpha,
        }
        cfg = resolve(
            "saliency",
            preset,
            run.config,
            run.overrides,
            epochs=run.epochs,
            batch_size=run.batch_size,
            lr=run.lr,
            seed=run.seed,
            device=run.device,
            workers=run.workers,
            freeze_epochs=t.staged,
            extra_losses=(term,),
        )
        cfg = apply_saliency_options(cfg, SaliencyOptions(corruption_augment=corruption_augment))
        fold_value = fold if fold == "full" else parse_fold(fold, run.folds)
        spec = TargetSpec(t.target, t.target_sigma)
        req = RunRequest(
            data, out, run.folds, fold_value, run.resume, run.drop_bad_labels, run.init, run.cache,
            progress=not run.quiet,
        )
        stage3 = None
        if dual is not None and dual.dual_encoder is not None:
            stage3 = DualEncoder(dual.dual_encoder, dual.fusion_epochs, dual.fusion_hidden)
        path = train_saliency(cfg, req, spec, t.gaze_csv, stage3)
    except Interrupted as exc:
        typer.echo(f"triage {command}: {exc}; run the same command with --resume to continue", err=True)
        return 130
    except (ConfigError, TargetError, DataCheckError, ValueError, FileNotFoundError) as exc:
        return error(command, str(exc))
    typer.echo(f"saliency run: {path}")
    return 0


def shortcut_command(opts: ShortcutOptions) -> int:
    from training.saliency.shortcut import ShortcutSetup, run_experiment

    setup_logging(opts.quiet)
    out = opts.out
    try:
        setup = ShortcutSetup(
            out,
            models=opts.models,
            preset=opts.preset,
            heatmap_weight=opts.heatmap_weight,
            train_studies=opts.train_studies,
            test_studies=opts.test_studies,
            epochs=opts.epochs,
            cache=opts.cache,
            progress=False,
        )
        result: dict[str, Any] = run_experiment(setup, lambda m: typer.echo(m, err=True))
    except Interrupted as exc:
        typer.echo(f"triage shortcut-experiment: {exc}; run the same command again to continue", err=True)
        return 130
    except (ConfigError, ValueError) as exc:
        return error("shortcut-experiment", str(exc))
    typer.echo((out / "results.md").read_text(encoding="utf-8"))
    typer.echo(
        f"wall {result['wall_s']:.0f} s, CPU {result['cpu_s_this_process']:.0f} s (this invocation); "
        f"results in {out}/results.md and {out}/results.json"
    )
    return 0
