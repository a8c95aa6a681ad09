"""The bodies of ``triage train ...`` and ``triage experiment`` (the Typer options live in
triage/cli/train_cmd.py and call these at run time). Each returns the exit status: 0 done, 2 a usage or
data error (one line on stderr), 130 interrupted (the state is saved; run again with --resume)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import typer

from training.config import ConfigError, resolve
from training.engine import Interrupted
from training.prepare import DataError
from training.run import RunRequest, fold_runs, parse_fold, train
from training.run_format import read_run_card


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(levelname)s %(message)s",
        stream=sys.stderr,
    )


def _error(command: str, message: str) -> int:
    typer.echo(f"triage {command}: error: {message}", err=True)
    return 2


def train_command(role: str, data: Path, out: Path, *, preset: str, config: Path | None, overrides: list[str],
                  folds: int, fold: str, epochs: int | None, batch_size: int | None, lr: float | None,
                  seed: int | None, device: str | None, workers: int | None, init: Path | None, resume: bool,
                  drop_bad_labels: bool, cache: Path | None, quiet: bool,
                  saliency: dict[str, Any] | None = None) -> int:
    _setup_logging(quiet)
    try:
        cfg = resolve(role, preset, config, overrides, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                      device=device, workers=workers)
        if saliency:  # --heatmap-loss ..., --corruption-augment P (training/saliency/cli.py)
            from training.saliency.cli import SaliencyOptions, apply_saliency_options

            cfg = apply_saliency_options(cfg, SaliencyOptions(**saliency))
        fold_value = fold if fold in ("all", "full") else parse_fold(fold, folds)
        req = RunRequest(
            data, out, folds, fold_value, resume, drop_bad_labels, init, cache, progress=not quiet
        )
        runs = train(cfg, req)
    except Interrupted as exc:
        typer.echo(
            f"triage train {role}: {exc}; the state is saved in {out}: run the same command with "
            "--resume to continue",
            err=True,
        )
        return 130
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        return _error(f"train {role}", str(exc))
    for run in runs:
        typer.echo(f"{role} run: {run}")
    return 0


def thresholds_command(classifier: Path, segmenter: Path, apply_to: list[Path], tta: bool) -> int:
    from training.thresholds import choose, save_search, write_thresholds

    _setup_logging(False)
    try:
        block, result = choose(classifier, segmenter, tta=tta)
        extra_cls = [p for p in apply_to if read_run_card(p).role == "classifier"]
        extra_seg = [p for p in apply_to if read_run_card(p).role != "classifier"]
        cls_runs = [*fold_runs(classifier), *extra_cls]
        seg_runs = [*fold_runs(segmenter), *extra_seg]
        write_thresholds(block, cls_runs, seg_runs)
        save_search(segmenter / "thresholds.json", block, result)
    except (DataError, ValueError) as exc:
        return _error("train thresholds", str(exc))
    keys = ("gate", "top", "min_area", "bottom", "min_component")
    typer.echo(
        "chosen: "
        + ", ".join(f"{k} {block[k]}" for k in keys)
        + f" → Dice per image {result.value:.4f} on {result.images} out-of-fold images"
    )
    typer.echo(
        f"written into {len(cls_runs)} classifier and {len(seg_runs)} segmenter run card(s); "
        f"search summary: {segmenter / 'thresholds.json'}"
    )
    return 0


def experiment_command(
    data: Path,
    out: Path,
    test: Path | None,
    preset: str,
    folds: int,
    overrides: list[str],
    cache: Path | None,
    quiet: bool,
) -> int:
    from training.experiment import run

    _setup_logging(quiet)
    try:
        summary: dict[str, Any] = run(data, out, test, preset, folds, overrides, cache, progress=not quiet)
    except Interrupted as exc:
        typer.echo(f"triage experiment: {exc}; run the same command again to continue", err=True)
        return 130
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        return _error("experiment", str(exc))
    typer.echo((out / "table.md").read_text(encoding="utf-8"))
    if test is not None:
        typer.echo((out / "test.md").read_text(encoding="utf-8"))
    t = summary["timings"]
    typer.echo(
        f"wall {t['wall_s_this_invocation']:.0f} s, CPU {t['cpu_s_this_invocation']:.0f} s "
        "(this invocation); "
        f"results in {out}/table.md and {out}/experiment.json"
    )
    return 0
