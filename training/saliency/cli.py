"""The bodies of ``triage train saliency``, ``triage export-saliency``, ``triage shortcut-experiment`` and of
the saliency options of ``triage train classifier`` (the Typer options live in triage/cli/saliency_cmd.py
and triage/cli/train_cmd.py). Each command returns the exit status: 0 done, 2 a usage or data error (one
line on stderr), 130 interrupted."""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

import typer

import training.saliency.terms  # noqa: F401  (registers the loss terms and the corruption augmentation)
from training.config import ConfigError, TrainConfig, resolve
from training.engine import Interrupted
from training.run import RunRequest, parse_fold
from training.saliency.heatmap_loss import HeatmapLossConfig
from training.saliency.losses import MAP_LOSSES
from training.saliency.targets import TargetError
from training.saliency.terms import DataCheckError

HEATMAP_METHODS = ("hirescam", "gradcam")


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(levelname)s %(message)s",
        stream=sys.stderr,
    )


def _error(command: str, message: str) -> int:
    typer.echo(f"triage {command}: error: {message}", err=True)
    return 2


@dataclasses.dataclass(frozen=True)
class SaliencyOptions:
    """``--heatmap-*`` and ``--corruption-augment`` of ``triage train ROLE``."""

    heatmap_loss: str | None = None
    heatmap_weight: float = 1.0
    heatmap_class: str = "predicted"
    heatmap_mode: str = "irrelevant"
    heatmap_region: str = "lungs"
    heatmap_layer: str | None = None
    corruption_augment: float = 0.0


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
        if o.heatmap_loss not in HEATMAP_METHODS:
            raise ValueError(f"--heatmap-loss must be one of {list(HEATMAP_METHODS)}, got {o.heatmap_loss!r}")
        HeatmapLossConfig(
            method=o.heatmap_loss,
            weight=o.heatmap_weight,
            which=o.heatmap_class,  # type: ignore[arg-type]
            mode=o.heatmap_mode,
            region=o.heatmap_region,
            layer=o.heatmap_layer,
        )  # type: ignore[arg-type]
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
    *,
    preset: str,
    target: str,
    gaze_csv: Path | None,
    target_sigma: float,
    map_loss: str,
    alpha: float,
    cls_weight: float,
    staged: int,
    folds: int,
    fold: str,
    epochs: int | None,
    batch_size: int | None,
    lr: float | None,
    seed: int | None,
    device: str | None,
    overrides: list[str],
    corruption_augment: float,
    init: Path | None,
    resume: bool,
    drop_bad_labels: bool,
    cache: Path | None,
    quiet: bool,
) -> int:
    from training.saliency.task import TargetSpec
    from training.saliency.train import train_saliency

    _setup_logging(quiet)
    command = "train saliency"
    try:
        if map_loss not in MAP_LOSSES:
            raise ValueError(f"--map-loss must be one of {list(MAP_LOSSES)}, got {map_loss!r}")
        if not 0.0 < cls_weight <= 1.0:
            raise ValueError(f"--cls-weight must be in (0, 1], got {cls_weight}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"--alpha must be in [0, 1], got {alpha}")
        if staged < 0:
            raise ValueError(f"--staged must be >= 0 epochs, got {staged}")
        if target == "gaze" and gaze_csv is None:
            raise ValueError("--target gaze needs --gaze-csv FILE")
        term = {
            "name": "saliency_map",
            "weight": (1.0 - cls_weight) / cls_weight,
            "kind": map_loss,
            "alpha": alpha,
        }
        cfg = resolve(
            "saliency",
            preset,
            None,
            overrides,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            device=device,
            freeze_epochs=staged,
            extra_losses=(term,),
        )
        cfg = apply_saliency_options(cfg, SaliencyOptions(corruption_augment=corruption_augment))
        fold_value = fold if fold == "full" else parse_fold(fold, folds)
        spec = TargetSpec(target, target_sigma)  # type: ignore[arg-type]
        req = RunRequest(
            data, out, folds, fold_value, resume, drop_bad_labels, init, cache, progress=not quiet
        )
        run = train_saliency(cfg, req, spec, gaze_csv)
    except Interrupted as exc:
        typer.echo(f"triage {command}: {exc}; run the same command with --resume to continue", err=True)
        return 130
    except (ConfigError, TargetError, DataCheckError, ValueError, FileNotFoundError) as exc:
        return _error(command, str(exc))
    typer.echo(f"saliency run: {run}")
    return 0


def export_saliency_command(run: Path, bundle: Path) -> int:
    from training.saliency.export import add_to_bundle
    from triage.errors import TriageError

    try:
        entry = add_to_bundle(run, bundle)
    except (ValueError, TriageError) as exc:
        return _error("export-saliency", str(exc))
    typer.echo(
        f"added {entry['file']} to {bundle} (torch/ONNX max abs diff "
        f"{entry['provenance']['parity_max_abs_diff']:.2g}); bundle resealed"
    )
    return 0


def shortcut_command(
    out: Path,
    *,
    models: int,
    preset: str,
    epochs: int | None,
    heatmap_weight: float,
    train_studies: int,
    test_studies: int,
    cache: Path | None,
    quiet: bool,
) -> int:
    from training.saliency.shortcut import ShortcutSetup, run_experiment

    _setup_logging(quiet)
    try:
        setup = ShortcutSetup(
            out,
            models=models,
            preset=preset,
            heatmap_weight=heatmap_weight,
            train_studies=train_studies,
            test_studies=test_studies,
            epochs=epochs,
            cache=cache,
            progress=False,
        )
        result: dict[str, Any] = run_experiment(setup, lambda m: typer.echo(m, err=True))
    except Interrupted as exc:
        typer.echo(f"triage shortcut-experiment: {exc}; run the same command again to continue", err=True)
        return 130
    except (ConfigError, ValueError) as exc:
        return _error("shortcut-experiment", str(exc))
    typer.echo((out / "results.md").read_text(encoding="utf-8"))
    typer.echo(
        f"wall {result['wall_s']:.0f} s, CPU {result['cpu_s_this_process']:.0f} s (this invocation); "
        f"results in {out}/results.md and {out}/results.json"
    )
    return 0
