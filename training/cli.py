"""The commands of the ``training`` package, registered with ``triage`` through the ``triage.commands``
entry-point group (pyproject.toml): ``triage train classifier|segmenter|baseline|saliency|thresholds``,
``triage experiment``, ``triage shortcut-experiment`` and ``triage folds``.

This module imports only typer and the option sets: the bodies (:mod:`training.commands`,
:mod:`training.saliency.commands`; torch) are imported when a command runs, so ``triage --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from training.options import DataSet, ExperimentOptions, Preset, RunOptions
from training.saliency.options import CorruptionAugment, SaliencyOptions, SaliencyTarget, ShortcutOptions
from triage.cli.options import option_sets

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
train_app = typer.Typer(
    help="Train the classifier, the positive-only segmenter, the baseline or the saliency U-Net.",
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
    "classifier": "Train the gate: a CAM classifier (timm) on all images; soft-F1 loss, RAdam, one-cycle.",
    "segmenter": "Train the positive-only U-Net (smp) of the cascade: Jaccard loss, positive images only.",
    "baseline": "Train the baseline U-Net: the segmenter's configuration trained on all images.",
}


def _missing_extra(command: str, exc: ImportError) -> typer.Exit:
    hint = "needs the training extra: pip install 'triage[training]'"
    typer.echo(f"triage {command}: {hint} ({exc})", err=True)
    return typer.Exit(2)


def _bodies(command: str) -> Any:
    """training.commands (torch), imported when a command runs."""
    try:
        from training import commands
    except ImportError as exc:
        raise _missing_extra(command, exc) from None
    return commands


def _saliency_bodies(command: str) -> Any:
    """training.saliency.commands (torch), imported when a command runs."""
    try:
        from training.saliency import commands
    except ImportError as exc:
        raise _missing_extra(command, exc) from None
    return commands


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
        raise typer.Exit(_bodies(f"train {role}").train_command(role, data, out, preset, fold, run, saliency))

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
    corruption_augment: CorruptionAugment = 0.0,
) -> None:
    """Train the saliency U-Net: its decoder learns target heatmaps (BCE, KL or MSE).

    An smp U-Net with a classification head; the map loss can be mixed with the head's CAM and staged
    (encoder frozen first).
    """
    body = _saliency_bodies("train saliency")
    raise typer.Exit(body.train_saliency_command(data, out, preset, fold, run, target, corruption_augment))


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
    """Choose the gate and the triplet on the out-of-fold predictions; write them into the runs.

    The gate and (top, min_area, bottom, min_component) maximise the cascade's Dice per image; they are
    written into the runs' model.json.
    """
    body = _bodies("train thresholds")
    raise typer.Exit(body.thresholds_command(classifier, segmenter, list(apply_to or []), tta))


@app.command(rich_help_panel="Train")
@option_sets
def experiment(opts: ExperimentOptions) -> None:
    """The cascade-vs-baseline table (the thesis's Table 5.1) on your data, cross-validated.

    Trains the classifier, the positive-only U-Net and the baseline U-Net per fold; argmax / threshold /
    TTA rows, mean ± std over folds. Resumable: run it again to continue.
    """
    raise typer.Exit(_bodies("experiment").experiment_command(opts))


@app.command("shortcut-experiment", rich_help_panel="Train")
@option_sets
def shortcut_experiment(opts: ShortcutOptions) -> None:
    """The shortcut experiment: does the heatmap loss keep a classifier off the chest drain?

    CE vs heatmap-loss classifiers on data where a drain predicts the label in training but not in test;
    AUC, CAM mass in the lungs / on the drain, audits, Mann-Whitney. Resumable.
    """
    raise typer.Exit(_saliency_bodies("shortcut-experiment").shortcut_command(opts))


@app.command(rich_help_panel="Data")
def folds(
    data: Annotated[Path, typer.Argument(help="A synthetic set (metadata.csv) to split.")],
    k: Annotated[int, typer.Option("--folds", min=2, help="Number of folds.")] = 5,
    seed: Annotated[int, typer.Option(help="Shuffling seed.")] = 0,
    out: Annotated[Path | None, typer.Option(help="CSV to write; default DATA/folds.csv.")] = None,
) -> None:
    """Patient-level stratified K-fold split of a data set, saved to CSV."""
    from training.console import error

    try:
        from training.folds import make_folds, write_folds_csv
    except ImportError as exc:
        raise _missing_extra("folds", exc) from None
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
