"""``triage train classifier|segmenter|baseline|thresholds`` (the training extra).

This module imports only typer: the training code (torch) is imported inside the commands, so that
``triage --help`` and the runtime stay fast and torch-free.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated, Any

import typer

train_app = typer.Typer(
    help="Train the classifier, the positive-only segmenter or the baseline U-Net; choose thresholds. "
    "Needs the training extra (torch, timm, segmentation-models-pytorch).",
    no_args_is_help=True,
)
ROLE_HELP = {
    "classifier": "Train the gate: a CAM classifier (timm) on all images, soft-F1 loss, RAdam, one-cycle.",
    "segmenter": "Train the positive-only U-Net (smp) of the cascade: Jaccard loss on positive images only.",
    "baseline": "Train the baseline U-Net: the segmenter's configuration trained on all images.",
}


def _training_cli(command: str) -> Any:
    """training/cli.py, imported at run time (torch) so that this module stays light and torch-free."""
    try:
        return importlib.import_module("training.cli")
    except ImportError as exc:
        message = f"needs the training extra: pip install 'triage[training]' ({exc})"
        typer.echo(f"triage {command}: error: {message}", err=True)
        raise typer.Exit(2) from None


def _make_train_command(role: str) -> Any:
    def command(
        data: Annotated[
            Path,
            typer.Option(
                help="Data set: SIIM-ACR layout (train-rle.csv + DICOM) or folder format (images/, masks/)."
            ),
        ],
        out: Annotated[Path, typer.Option(help="Run folder (--fold K or full) or CV folder (--fold all).")],
        preset: Annotated[
            str, typer.Option(help="seed (the thesis's models, GPU), small (2-core CPU), tiny.")
        ] = "small",
        config: Annotated[
            Path | None, typer.Option(help="YAML file of config keys overriding the preset.")
        ] = None,
        set_: Annotated[
            list[str] | None,
            typer.Option("--set", help="KEY=VALUE override, dotted keys (augment.rotate_deg=5); repeatable."),
        ] = None,
        folds: Annotated[int, typer.Option(help="Number of patient-level folds.")] = 5,
        fold: Annotated[
            str,
            typer.Option(
                help="Fold to hold out (0..folds-1), 'all' (every fold, with "
                "out-of-fold predictions) or 'full' (all images)."
            ),
        ] = "0",
        epochs: Annotated[int | None, typer.Option(help="Epochs (overrides the preset).")] = None,
        batch_size: Annotated[int | None, typer.Option(help="Batch size.")] = None,
        lr: Annotated[
            float | None, typer.Option(help="Peak learning rate of the one-cycle schedule.")
        ] = None,
        seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
        device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
        workers: Annotated[
            int | None, typer.Option(help="Data loader worker processes (0: in the main process).")
        ] = None,
        init: Annotated[
            Path | None,
            typer.Option(
                help="Local weights to start from (.safetensors or a state dict); never downloaded."
            ),
        ] = None,
        resume: Annotated[
            bool, typer.Option(help="Continue an interrupted run (or skip finished folds).")
        ] = False,
        drop_bad_labels: Annotated[
            bool,
            typer.Option(
                help="Train without the images that have label problems (listed in label_problems.csv)."
            ),
        ] = False,
        cache: Annotated[
            Path | None,
            typer.Option(help="Grid cache folder (default $TRIAGE_CACHE_DIR or ~/.cache/triage/grids)."),
        ] = None,
        quiet: Annotated[bool, typer.Option(help="No progress bars or per-epoch logs.")] = False,
        heatmap_loss: Annotated[str | None, typer.Option(help="classifier: add the heatmap loss on this "
                                                              "attribution, hirescam or gradcam "
                                                              "(docs/saliency.md).")] = None,
        heatmap_weight: Annotated[float, typer.Option(help="lambda of the heatmap loss.")] = 1.0,
        heatmap_class: Annotated[str, typer.Option(help="Class whose map is penalised: predicted or "
                                                        "true.")] = "predicted",
        heatmap_mode: Annotated[str, typer.Option(help="irrelevant (mass outside the region) or relevant "
                                                       "(missing mass inside).")] = "irrelevant",
        heatmap_region: Annotated[str, typer.Option(help="lungs (lung-field masks) or lesion (pneumothorax "
                                                         "masks).")] = "lungs",
        heatmap_layer: Annotated[str | None, typer.Option(help="Layer to explain (a module name); default "
                                                               "the last feature map.")] = None,
        corruption_augment: Annotated[float, typer.Option(help="Probability of one random robustness "
                                                               "corruption per training image (0: off).")]
        = 0.0,
    ) -> None:
        options = {"preset": preset, "config": config, "overrides": set_ or [], "folds": folds, "fold": fold,
                   "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "device": device,
                   "workers": workers, "init": init, "resume": resume, "drop_bad_labels": drop_bad_labels,
                   "cache": cache, "quiet": quiet,
                   "saliency": {"heatmap_loss": heatmap_loss, "heatmap_weight": heatmap_weight,
                                "heatmap_class": heatmap_class, "heatmap_mode": heatmap_mode,
                                "heatmap_region": heatmap_region, "heatmap_layer": heatmap_layer,
                                "corruption_augment": corruption_augment}}
        raise typer.Exit(_training_cli(f"train {role}").train_command(role, data, out, **options))

    command.__doc__ = ROLE_HELP[role]
    return command


for _role in ROLE_HELP:
    train_app.command(_role)(_make_train_command(_role))


@train_app.command("thresholds")
def thresholds(
    classifier: Annotated[
        Path, typer.Option(help="Classifier CV folder (triage train classifier --fold all).")
    ],
    segmenter: Annotated[Path, typer.Option(help="Segmenter CV folder (triage train segmenter --fold all).")],
    apply_to: Annotated[
        list[Path] | None,
        typer.Option(help="Further runs to write the thresholds into (e.g. --fold full runs); repeatable."),
    ] = None,
    tta: Annotated[
        bool,
        typer.Option(help="Search on the test-time-augmented predictions (as the runtime runs by default)."),
    ] = True,
) -> None:
    """Choose the gate and the triplet (top, min_area, bottom, min_component) that maximise the cascade's
    Dice per image on the out-of-fold predictions; write them into the runs' model.json."""
    module = _training_cli("train thresholds")
    raise typer.Exit(module.thresholds_command(classifier, segmenter, list(apply_to or []), tta))


def run_experiment(
    data: Path,
    out: Path,
    test: Path | None,
    preset: str,
    folds: int,
    overrides: list[str],
    cache: Path | None,
    quiet: bool,
) -> int:
    """``triage experiment`` (body: training/cli.py)."""
    module = _training_cli("experiment")
    return int(module.experiment_command(data, out, test, preset, folds, overrides, cache, quiet))
