"""Typer options of ``triage train saliency``, ``triage export-saliency`` and ``triage shortcut-experiment``
(the training extra). Imports only typer: the bodies in training/saliency/cli.py (torch) are imported when
a command runs. docs/saliency.md describes them."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated, Any

import typer


def _bodies(command: str) -> Any:
    try:
        return importlib.import_module("training.saliency.cli")
    except ImportError as exc:
        typer.echo(
            f"triage {command}: error: needs the training extra: pip install 'triage[training]' ({exc})",
            err=True,
        )
        raise typer.Exit(2) from None


def train_saliency_command(
    data: Annotated[
        Path,
        typer.Option(
            help="Data set: SIIM-ACR layout or folder format (with heatmaps/ for --target heatmap)."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Run folder.")],
    preset: Annotated[
        str, typer.Option(help="seed (EfficientNet-b0 U-Net, GPU), small (2-core CPU), tiny.")
    ] = "small",
    target: Annotated[
        str,
        typer.Option(
            help="Target heatmaps: heatmap (the data set's reading heatmaps), "
            "lesion (blurred pneumothorax masks) or gaze (--gaze-csv)."
        ),
    ] = "heatmap",
    gaze_csv: Annotated[
        Path | None,
        typer.Option(
            help="Eye-gaze fixations: CSV image_id,x,y[,weight] in source pixels (docs/saliency.md)."
        ),
    ] = None,
    target_sigma: Annotated[
        float, typer.Option(help="Gaussian sigma in source pixels (lesion, gaze).")
    ] = 150.0,
    map_loss: Annotated[str, typer.Option(help="Decoder loss against the target: bce, kl or mse.")] = "bce",
    alpha: Annotated[
        float, typer.Option(help="alpha*(decoder vs target) + (1-alpha)*(head CAM vs target).")
    ] = 1.0,
    cls_weight: Annotated[
        float, typer.Option(help="gamma in gamma*L_cls + (1-gamma)*L_map, in (0, 1].")
    ] = 0.5,
    staged: Annotated[
        int,
        typer.Option(
            help="First N epochs with the encoder frozen (the decoder learns the target first); 0 = off."
        ),
    ] = 0,
    folds: Annotated[int, typer.Option(help="Number of patient-level folds.")] = 5,
    fold: Annotated[str, typer.Option(help="Fold to validate on (0..folds-1) or 'full' (all images).")] = "0",
    epochs: Annotated[
        int | None, typer.Option(help="Epochs after the staged ones (default: the preset's).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="KEY=VALUE config override; repeatable.")
    ] = None,
    corruption_augment: Annotated[
        float,
        typer.Option(help="Probability of one random robustness corruption per training image (0: off)."),
    ] = 0.0,
    init: Annotated[Path | None, typer.Option(help="Local weights to start from (never downloaded).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run.")] = False,
    drop_bad_labels: Annotated[
        bool, typer.Option(help="Train without images that have label problems.")
    ] = False,
    cache: Annotated[Path | None, typer.Option(help="Grid cache folder.")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bars or per-epoch logs.")] = False,
) -> None:
    """Train the saliency U-Net: an smp U-Net with a classification head whose decoder learns target
    heatmaps (BCE, KL or MSE), optionally mixed with the head's CAM and staged."""
    raise typer.Exit(
        _bodies("train saliency").train_saliency_command(
            data,
            out,
            preset=preset,
            target=target,
            gaze_csv=gaze_csv,
            target_sigma=target_sigma,
            map_loss=map_loss,
            alpha=alpha,
            cls_weight=cls_weight,
            staged=staged,
            folds=folds,
            fold=fold,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            device=device,
            overrides=set_ or [],
            corruption_augment=corruption_augment,
            init=init,
            resume=resume,
            drop_bad_labels=drop_bad_labels,
            cache=cache,
            quiet=quiet,
        )
    )


def export_saliency_command(
    run: Annotated[Path, typer.Option(help="A saliency run (triage train saliency).")],
    bundle: Annotated[Path, typer.Option(help="The model bundle to add it to (resealed).")],
) -> None:
    """Export a saliency run to ONNX and add it to a bundle as its saliency model (models.saliency)."""
    raise typer.Exit(_bodies("export-saliency").export_saliency_command(run, bundle))


def shortcut_command(
    out: Annotated[Path, typer.Option(help="Experiment folder: data/, runs/, results.md, results.json.")],
    models: Annotated[int, typer.Option(help="Classifiers per group (cross-entropy, heatmap loss).")] = 5,
    preset: Annotated[str, typer.Option(help="Classifier preset.")] = "small",
    epochs: Annotated[int | None, typer.Option(help="Epochs (default: the preset's).")] = None,
    heatmap_weight: Annotated[float, typer.Option(help="lambda of the heatmap loss.")] = 1.0,
    train_studies: Annotated[int, typer.Option(help="Training studies (drain in 90 % / 2 %).")] = 500,
    test_studies: Annotated[
        int, typer.Option(help="Test studies (drain in 50 %, independent of the label).")
    ] = 400,
    cache: Annotated[Path | None, typer.Option(help="Grid cache folder.")] = None,
    quiet: Annotated[bool, typer.Option(help="No per-epoch logs.")] = False,
) -> None:
    """The shortcut experiment: CE vs heatmap-loss classifiers on data where a chest drain predicts the
    label in training but not in test; AUC, CAM mass in the lungs / on the drain, audits, Mann-Whitney.
    Resumable."""
    raise typer.Exit(
        _bodies("shortcut-experiment").shortcut_command(
            out,
            models=models,
            preset=preset,
            epochs=epochs,
            heatmap_weight=heatmap_weight,
            train_studies=train_studies,
            test_studies=test_studies,
            cache=cache,
            quiet=quiet,
        )
    )
