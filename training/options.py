"""The options of ``triage train ...``, ``triage experiment`` and ``triage folds``, each declared once.

Option sets are dataclasses whose fields carry their Typer declaration (see :mod:`triage.cli.options`):
the command line shows each field as an option, the command bodies (:mod:`training.commands`,
:mod:`training.saliency.commands`) receive the typed object. This module imports only typer, so that
``triage --help`` stays fast and torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import typer

Preset = Literal["seed", "cpu", "small", "tiny"]
TrainDevice = Literal["auto", "cpu", "cuda"]

DataSet = Annotated[
    Path,
    typer.Option(help="SIIM-ACR layout (train-rle.csv + DICOM) or folder format (images/, masks/)."),
]
Folds = Annotated[int, typer.Option(min=2, help="Number of patient-level folds.")]
Quiet = Annotated[bool, typer.Option(help="No progress bars or per-epoch logs.")]
Cache = Annotated[
    Path | None,
    typer.Option(help="Grid cache folder (default $TRIAGE_CACHE_DIR or ~/.cache/triage/grids)."),
]
_JOBS_HELP = (
    "Fold runs trained side by side, each in its own process (CPU: cores ÷ N threads each; "
    "CUDA: one GPU each)."
)
Jobs = Annotated[int, typer.Option(min=1, help=_JOBS_HELP + " With --fold all.")]
ExperimentJobs = Annotated[int, typer.Option(min=1, help=_JOBS_HELP)]
Overrides = Annotated[
    list[str],
    typer.Option("--set", help="KEY=VALUE config override, dotted keys (augment.rotate_deg=5); repeatable."),
]


@dataclass(frozen=True)
class RunOptions:
    """What every ``triage train ROLE`` takes beside the data and the run folder."""

    config: Annotated[
        Path | None, typer.Option(help="YAML file of config keys overriding the preset.")
    ] = None
    overrides: Overrides = field(default_factory=list)
    folds: Folds = 5
    jobs: Jobs = 1
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs (overrides the preset).")] = None
    batch_size: Annotated[int | None, typer.Option(min=1, help="Batch size.")] = None
    lr: Annotated[
        float | None, typer.Option(min=0.0, help="Peak learning rate of the one-cycle schedule.")
    ] = None
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None
    device: Annotated[TrainDevice | None, typer.Option(help="Where to train (default: the preset's).")] = None
    workers: Annotated[
        int | None, typer.Option(min=0, help="Data loader worker processes (0: in the main process).")
    ] = None
    init: Annotated[
        Path | None,
        typer.Option(help="Local weights to start from (.safetensors, state dict); never downloaded."),
    ] = None
    resume: Annotated[
        bool, typer.Option(help="Continue an interrupted run (or skip finished folds).")
    ] = False
    drop_bad_labels: Annotated[
        bool,
        typer.Option(help="Train without the images with label problems (see label_problems.csv)."),
    ] = False
    cache: Cache = None
    quiet: Quiet = False


@dataclass(frozen=True)
class ExperimentOptions:
    """``triage experiment``: the cascade-vs-baseline cross-validation."""

    data: Annotated[Path, typer.Option(help="Training data for the cross-validation.")]
    out: Annotated[Path, typer.Option(help="Experiment folder (runs, table, reports).")]
    test: Annotated[Path | None, typer.Option(help="Held-out test data, per fold and stratum.")] = None
    preset: Annotated[Preset, typer.Option(help="Model and schedule preset.")] = "small"
    folds: Folds = 5
    overrides: Annotated[
        list[str],
        typer.Option("--set", help="ROLE.KEY=VALUE for one role (classifier.epochs=8), KEY=VALUE for all."),
    ] = field(default_factory=list)
    cache: Annotated[Path | None, typer.Option(help="Grid cache folder.")] = None
    jobs: ExperimentJobs = 1
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False
