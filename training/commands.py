"""The bodies of ``triage train ...``, ``triage experiment`` and ``triage folds`` (the Typer commands live in
training/cli.py and call these at run time). Each returns the exit status: 0 done, 2 a usage or
data error (one line on stderr), 130 interrupted (the state is saved; run again with --resume)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from training.config import ConfigError, resolve
from training.console import error, setup_logging
from training.engine import Interrupted
from training.prepare import DataError
from training.run import RunRequest, fold_runs, parse_fold, train
from training.run_format import read_run_card

if TYPE_CHECKING:
    from training.options import ExperimentOptions, RunOptions
    from training.saliency.options import SaliencyOptions


def train_command(
    role: str, data: Path, out: Path, preset: str, fold: str, run: RunOptions, saliency: SaliencyOptions
) -> int:
    from training.saliency.commands import apply_saliency_options

    setup_logging(run.quiet)
    try:
        cfg = resolve(role, preset, run.config, run.overrides, epochs=run.epochs, batch_size=run.batch_size,
                      lr=run.lr, seed=run.seed, device=run.device, workers=run.workers)
        cfg = apply_saliency_options(cfg, saliency)
        fold_value = fold if fold in ("all", "full") else parse_fold(fold, run.folds)
        req = RunRequest(
            data, out, run.folds, fold_value, run.resume, run.drop_bad_labels, run.init, run.cache,
            progress=not run.quiet, jobs=run.jobs,
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
        return error(f"train {role}", str(exc))
    for path in runs:
        typer.echo(f"{role} run: {path}")
    return 0


def thresholds_command(classifier: Path, segmenter: Path, apply_to: list[Path], tta: bool) -> int:
    from training.thresholds import choose, save_search, write_thresholds

    setup_logging(False)
    try:
        block, result = choose(classifier, segmenter, tta=tta)
        extra_cls = [p for p in apply_to if read_run_card(p).role == "classifier"]
        extra_seg = [p for p in apply_to if read_run_card(p).role != "classifier"]
        cls_runs = [*fold_runs(classifier), *extra_cls]
        seg_runs = [*fold_runs(segmenter), *extra_seg]
        write_thresholds(block, cls_runs, seg_runs)
        save_search(segmenter / "thresholds.json", block, result)
    except (DataError, ValueError) as exc:
        return error("train thresholds", str(exc))
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


def experiment_command(opts: ExperimentOptions) -> int:
    from training.experiment import run

    setup_logging(opts.quiet)
    out = opts.out
    try:
        summary: dict[str, Any] = run(
            opts.data, opts.out, opts.test, opts.preset, opts.folds, opts.overrides, opts.cache,
            progress=not opts.quiet, jobs=opts.jobs,
        )
    except Interrupted as exc:
        typer.echo(f"triage experiment: {exc}; run the same command again to continue", err=True)
        return 130
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        return error("experiment", str(exc))
    typer.echo((out / "table.md").read_text(encoding="utf-8"))
    typer.echo((out / "paired.md").read_text(encoding="utf-8"))
    if opts.test is not None:
        typer.echo((out / "test.md").read_text(encoding="utf-8"))
    t = summary["timings"]
    typer.echo(
        f"wall {t['wall_s_this_invocation']:.0f} s, CPU {t['cpu_s_this_invocation']:.0f} s "
        "(this invocation); "
        f"results in {out}/table.md and {out}/experiment.json"
    )
    return 0

