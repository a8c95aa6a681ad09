"""The body of ``triage evaluate``: a bundle (ONNX Runtime, no torch) or training runs (torch: the loader
registered in the ``triage.run_loaders`` entry-point group, loaded only then), a progress bar, the report,
a short summary on the terminal."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from triage.cli.plugins import RUN_LOADERS, load_plugin
from triage.errors import TriageError
from triage.evaluation.context import EvalOptions
from triage.evaluation.models import Cascade, from_bundle, is_bundle


def load_cascade(models: list[Path], device: str) -> Cascade:
    """One bundle, or 1–3 run folders (classifier and/or segmenter/baseline, optionally a saliency run)."""
    bundles = [m for m in models if is_bundle(m)]
    if bundles:
        if len(models) > 1:
            raise ValueError("give either one bundle or run folders to --model, not both")
        return from_bundle(bundles[0], device)  # type: ignore[arg-type]
    missing = [str(m) for m in models if not (m / "model.json").is_file()]
    if missing:
        raise ValueError(
            f"--model {missing[0]}: neither a bundle (card.json) nor a training run (model.json)"
        )
    if len(models) > 3:
        raise ValueError("give at most three runs: a classifier, a segmenter or baseline, and a saliency run")
    from_runs = load_plugin(RUN_LOADERS, "evaluating training runs")
    cascade: Cascade = from_runs(models, device)
    return cascade


def run_evaluate(
    models: list[Path],
    data: Path,
    out: Path,
    options: EvalOptions,
    sections: list[str],
    tta: bool,
    device: str,
    cache: Path | None,
    batch_size: int,
) -> int:
    from triage.evaluation.report import evaluate

    logging.basicConfig(level=logging.WARNING)
    try:
        cascade = load_cascade(models, device)
    except (TriageError, ValueError) as exc:
        typer.echo(f"triage evaluate: error: {exc}", err=True)
        return 2
    columns = (TextColumn("evaluate"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task("evaluate", total=None)
        try:
            report = evaluate(
                cascade,
                data,
                out,
                options=options,
                sections=sections,
                use_tta=tta,
                cache_dir=cache,
                batch_size=batch_size,
                on_total=lambda n: progress.update(task, total=n),
                on_done=lambda k: progress.advance(task, k),
            )
        except (ValueError, RuntimeError) as exc:
            progress.stop()
            typer.echo(f"triage evaluate: error: {exc}", err=True)
            return 2
    summary = report["sections"].get("summary", {})
    parts = [f"{report['images']} images"]
    if "classifier" in summary:
        parts.append(f"AUC {summary['classifier']['auc']:.3f}")
    seg = summary.get("segmentation", {})
    main = seg.get("model") or seg.get("none")
    if main:
        parts.append(f"Dice per image {main['dice_per_image']:.3f}")
    typer.echo("; ".join(parts) + f" → {out / 'report.md'}")
    return 0
