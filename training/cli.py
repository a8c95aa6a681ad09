"""The commands of the ``training`` package, registered with ``triage`` through the ``triage.commands``
entry-point group (pyproject.toml): ``triage train classifier|segmenter|baseline|saliency|thresholds``,
``triage experiment``, ``triage shortcut-experiment`` and ``triage folds``.

This module imports only typer and the option sets: the bodies (:mod:`training.commands`,
:mod:`training.saliency.commands`; torch) are imported when a command runs, so ``triage --help`` stays
fast. Without the training extra the root answers with a one-line hint before it loads this module
(triage/cli/plugins.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from training.options import DataSet, ExperimentOptions, Preset, RunOptions
from training.saliency.options import (
    CorruptionAugment,
    DualEncoderOptions,
    SaliencyOptions,
    SaliencyTarget,
    ShortcutOptions,
)
from triage.cli.options import option_sets

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
train_app = typer.Typer(
    help="Train the cascade's models and the saliency U-Net.\n\n"
    "Also `triage train thresholds`: the gate and triplet from out-of-fold predictions.",
    no_args_is_help=True,
)
app.add_typer(train_app, name="train", rich_help_panel="Train")

Out = Annotated[Path, typer.Option(help="Run folder (--fold K or full) or CV folder (--fold all).")]
PresetOption = Annotated[
    Preset, typer.Option(help="seed: the thesis's models (GPU); small: 2-core CPU; tiny: tests.")
]
Fold = Annotated[
    str,
    typer.Option(
        help="Fold to hold out (0..folds-1), 'all' (every fold, with out-of-fold predictions) or 'full'."
    ),
]
ROLE_HELP = {
    "classifier": "Train the gate: a CAM classifier on all images.\n\n"
    "A timm backbone; soft-F1 loss, RAdam, one-cycle schedule.",
    "segmenter": "Train the positive-only U-Net of the cascade.\n\n"
    "An smp U-Net; Jaccard loss, trained and validated on positive images only.",
    "baseline": "Train the baseline U-Net on all images.\n\n"
    "The segmenter's configuration, trained on all images.",
}


def _train_command(role: str) -> Any:
    @option_sets
    def command(
        data: DataSet,
        out: Out,
        *,
        preset: PresetOption = "small",
        fold: Fold = "0",
        run: RunOptions,
        saliency: SaliencyOptions,
    ) -> None:
        from training.commands import train_command

        raise typer.Exit(train_command(role, data, out, preset, fold, run, saliency))

    command.__doc__ = ROLE_HELP[role]
    return command


for _role in ROLE_HELP:
    train_app.command(_role)(_train_command(_role))


@train_app.command("saliency")
@option_sets
def train_saliency(
    data: Annotated[
        Path, typer.Option(help="SIIM-ACR layout or folder format (with heatmaps/ for --target heatmap).")
    ],
    out: Annotated[Path, typer.Option(help="Run folder.")],
    *,
    preset: Annotated[
        Preset, typer.Option(help="seed: EfficientNet-b0 U-Net (GPU); small: 2-core CPU; tiny: tests.")
    ] = "small",
    fold: Annotated[str, typer.Option(help="Fold to validate on (0..folds-1) or 'full' (all images).")] = "0",
    target: SaliencyTarget,
    run: RunOptions,
    dual: DualEncoderOptions,
    corruption_augment: CorruptionAugment = 0.0,
) -> None:
    """Train the saliency U-Net on target heatmaps.

    An smp U-Net with a classification head whose decoder learns the target heatmaps (BCE, KL or MSE);
    the map loss can be mixed with the head's CAM and staged (encoder frozen first). With --dual-encoder
    CLASSIFIER_RUN a fused head then learns the label from both frozen networks (seed 004).
    """
    from training.saliency.commands import train_saliency_command

    raise typer.Exit(train_saliency_command(data, out, preset, fold, run, target, corruption_augment, dual))


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
    """Choose the gate and triplet on out-of-fold predictions.

    The gate and (top, min_area, bottom, min_component) maximise the cascade's Dice per image; they are
    written into the runs' model.json.
    """
    from training.commands import thresholds_command

    raise typer.Exit(thresholds_command(classifier, segmenter, list(apply_to or []), tta))


@app.command(rich_help_panel="Train")
@option_sets
def experiment(opts: ExperimentOptions) -> None:
    """Cross-validate the cascade against the baseline U-Net.

    The thesis's Table 5.1 on your data: trains the classifier, the positive-only U-Net and the baseline
    U-Net per fold; argmax / threshold / TTA rows, mean ± std over folds. Resumable: run it again.
    """
    from training.commands import experiment_command

    raise typer.Exit(experiment_command(opts))


@app.command("shortcut-experiment", rich_help_panel="Train")
@option_sets
def shortcut_experiment(opts: ShortcutOptions) -> None:
    """Test whether the heatmap loss avoids a drain shortcut.

    CE vs heatmap-loss classifiers on data where a drain predicts the label in training but not in test;
    AUC, CAM mass in the lungs / on the drain, audits, Mann-Whitney. Resumable.
    """
    from training.saliency.commands import shortcut_command

    raise typer.Exit(shortcut_command(opts))


@app.command(rich_help_panel="Data")
def folds(
    data: Annotated[Path, typer.Argument(help="A synthetic set (metadata.csv) to split.")],
    k: Annotated[int, typer.Option("--folds", min=2, help="Number of folds.")] = 5,
    seed: Annotated[int, typer.Option(help="Shuffling seed.")] = 0,
    out: Annotated[Path | None, typer.Option(help="CSV to write; default DATA/folds.csv.")] = None,
) -> None:
    """Split a data set into patient-level stratified folds.

    Written to a CSV file (default DATA/folds.csv).
    """
    from training.console import error
    from training.folds import make_folds, write_folds_csv
    from triage.synth.dataset import read_metadata

    if not (data / "metadata.csv").exists():
        raise typer.Exit(error("folds", f"{data} has no metadata.csv"))
    table = [(r["image_id"], r["patient_id"], int(r["label"])) for r in read_metadata(data)]
    try:
        assignment = make_folds(table, k=k, seed=seed)
    except ValueError as exc:
        raise typer.Exit(error("folds", str(exc))) from None
    target = out or data / "folds.csv"
    write_folds_csv(target, table, assignment)
    typer.echo(f"wrote {k} patient-level folds of {len(table)} images to {target}")
