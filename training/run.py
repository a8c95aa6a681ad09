"""One training run, or all folds of a cross-validation, into run folders (format: training/run_format.py).

Folder layout::

    --fold K      OUT/ is one run trained on folds ≠ K, less an inner validation slice of them (15 %,
                  whole patients: training/prepare.py) that chooses the epoch; fold K is only predicted,
                  into OUT/oof/ (the epoch is never chosen on the fold that is scored)
    --fold all    OUT/fold-0 … OUT/fold-(k-1) (runs as above), OUT/cv.json
    --fold full   OUT/ is one run trained on every usable image (no validation, no OOF)

A run folder: model.json (the card export reads), best.safetensors / last.safetensors, config.yaml (the
resolved configuration), data.json (which images trained and validated), metrics.csv and tb/ (logs),
label_problems.csv (when there were any), oof/ (fold runs), fit.json (the fit's summary), state.pt (only
while unfinished: resume).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from training import distributed
from training.config import TrainConfig, write_config
from training.data import GridDataset, model_spec
from training.engine import STATE, FitResult, Hook, Trainer, pick_device
from training.fold_jobs import check_jobs, name_fold_in_logs, train_folds
from training.models import build_model, load_init_weights
from training.oof import oof_done, write_oof
from training.prepare import (
    DataError,
    Prepared,
    Split,
    assign_folds,
    prepare,
    problem_summary,
    split,
    write_problems,
)
from training.run_format import CARD, RunCard, read_run_card, write_run_card
from training.tasks import Task
from triage import __version__
from triage.data.gridcache import GridSpec

logger = logging.getLogger(__name__)
DATA_JSON = "data.json"
FIT_JSON = "fit.json"
CV_JSON = "cv.json"


@dataclass(frozen=True)
class RunRequest:
    """What ``triage train ROLE`` was asked to do (besides the configuration)."""

    data: Path
    out: Path
    folds: int = 5
    fold: int | str = 0  # an index, "all" or "full"
    resume: bool = False
    drop_bad_labels: bool = False
    init: Path | None = None
    cache_dir: Path | None = None
    progress: bool = True
    jobs: int = 1  # fold runs trained side by side (fold "all" only; training.fold_jobs)


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
            timeout=5,
            check=False,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _progress_callbacks(enabled: bool) -> tuple[Any, Callable[[int], None] | None, Callable[[], None] | None]:
    if not enabled:
        return None, None, None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("decode → grid cache"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()
    )
    task = progress.add_task("cache", total=None)

    def on_total(n: int) -> None:
        if n:
            progress.start()
        progress.update(task, total=n)

    return progress, on_total, lambda: progress.advance(task)


def prepare_for(config: TrainConfig, req: RunRequest) -> Prepared:
    """The data set decoded on the config's grid (decoding only what the cache lacks)."""
    progress, on_total, on_item = _progress_callbacks(req.progress)
    try:
        return prepare(
            req.data,
            GridSpec(config.input_size, config.resize),
            req.cache_dir,
            workers=0,
            on_total=on_total,
            on_item=on_item,
        )
    finally:
        if progress is not None:
            progress.stop()


def check_problems(prep: Prepared, req: RunRequest, report_dir: Path) -> None:
    """Report problems (per item, in report_dir/label_problems.csv); refuse unless they are dropped."""
    if not prep.problems:
        return
    report_dir.mkdir(parents=True, exist_ok=True)
    path = report_dir / "label_problems.csv"
    write_problems(path, prep.problems)
    summary = problem_summary(prep.problems)
    if not req.drop_bad_labels:
        raise DataError(
            f"{len(prep.problems)} label problem(s) ({summary}), listed per image in {path}; "
            "fix them or pass --drop-bad-labels to train without those images"
        )
    logger.warning("dropping %d image(s) with label problems (%s); see %s", len(prep.problems), summary, path)


def _data_record(prep: Prepared, sp: Split, req: RunRequest, fold: int | None) -> dict[str, Any]:
    g = prep.grids
    return {
        "data": str(req.data.resolve()),
        "cache": str(g.root),
        "folds": req.folds if fold is not None else None,
        "fold": fold if fold is not None else "full",
        "train": [g.ids[i] for i in sp.train],
        "val": [g.ids[i] for i in sp.val],
        "oof": [g.ids[i] for i in sp.oof],
        "dropped": sorted({p.item for p in prep.problems}),
    }


def _finished(run: Path, needs_oof: bool) -> bool:
    return (run / CARD).is_file() and not (run / STATE).exists() and (oof_done(run) or not needs_oof)


def train_one(
    config: TrainConfig,
    req: RunRequest,
    run: Path,
    fold: int | None,
    prep: Prepared | None = None,
    folds: dict[str, int] | None = None,
    hooks: Sequence[Hook] = (),
) -> Path:
    """Train one run into ``run`` (fold ``fold`` of ``req.folds``; None = all images). Returns ``run``."""
    if _finished(run, fold is not None):
        if req.resume:
            logger.info("%s is finished; nothing to resume", run)
            return run
        raise DataError(f"{run} holds a finished run; choose another --out (or --resume to skip it)")
    # with several processes, rank 0 alone decides (the others may already see its files)
    if run.exists() and any(run.iterdir()) and not req.resume and distributed.world()[0] == 0:
        raise DataError(f"{run} is not empty; pass --resume to continue that run, or choose another --out")
    prep = prep or prepare_for(config, req)
    check_problems(prep, req, run)
    if fold is not None and folds is None:
        folds = assign_folds(prep, req.folds, req.data)
    task = Task(config.role)
    sp = split(prep, config.role, folds, fold, req.folds)
    record = _data_record(prep, sp, req, fold)
    run.mkdir(parents=True, exist_ok=True)
    data_json = run / DATA_JSON
    if req.resume and data_json.is_file():
        before = json.loads(data_json.read_text(encoding="utf-8"))
        if before.get("train") != record["train"] or before.get("val") != record["val"]:
            raise DataError(
                f"{run}: the data set or the folds changed since the run started; "
                "resume needs the same --data, --folds and --fold"
            )
    rank, size = distributed.world()
    if rank == 0:  # with several processes, rank 0 writes the run folder's files
        data_json.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        write_config(run / "config.yaml", config)
    spec = model_spec(config)
    torch.manual_seed(config.seed)
    model = build_model(config.arch)
    if req.init is not None and not (run / STATE).exists():
        missing = load_init_weights(model, req.init)
        logger.info("--init %s: %d parameters not in the file (trained from scratch)", req.init, len(missing))
    g = prep.grids
    train_set = GridDataset(g, spec, config.augment, config.seed)
    val_set = GridDataset(g, spec, None, config.seed) if sp.val else None
    fit_json = run / FIT_JSON
    if fit_json.is_file() and not (run / STATE).exists():  # trained earlier; OOF or card were missing
        result = FitResult(**json.loads(fit_json.read_text(encoding="utf-8")))
    else:
        distributed.setup(pick_device(config.device))
        trainer = Trainer(
            config,
            task,
            model,
            train_set,
            sp.train,
            val_set,
            sp.val,
            run,
            progress=req.progress,
            hooks=hooks,
            rank=rank,
            world=size,
        )
        result = trainer.fit(resume=req.resume)
        if rank != 0:  # rank 0 writes the predictions, the card and the logs
            return run
        fit_json.write_text(json.dumps(dataclasses.asdict(result)) + "\n", encoding="utf-8")
    checkpoint = "best.safetensors" if config.select == "best" else "last.safetensors"
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(run / checkpoint)))
    device = pick_device(config.device)
    model.to(device)
    if fold is not None:
        write_oof(run, model, task, g, sp.oof, spec, config.tta, device)
    _write_card(run, config, req, prep, sp, fold, checkpoint, result)
    return run


def _write_card(
    run: Path,
    config: TrainConfig,
    req: RunRequest,
    prep: Prepared,
    sp: Split,
    fold: int | None,
    checkpoint: str,
    result: FitResult,
) -> None:
    g = prep.grids
    fit = {
        "best_epoch": result.best_epoch,
        "best_" + Task(config.role).metric: result.best_metric,
        "seconds": round(result.seconds, 1),
        "train_images_per_s": round(result.images_per_s, 2),
    }
    provenance = {
        "data": str(req.data.resolve()),
        "data_kind": "siim" if (req.data / "train-rle.csv").exists() else "folder",
        "train_images": len(sp.train),
        "train_positives": int(sum(g.labels[i] for i in sp.train)),
        "val_images": len(sp.val),
        "folds": req.folds if fold is not None else None,
        "fold": fold if fold is not None else "full",
        "dropped_images": len(prep.problems),
        "preset": config.preset,
        "epochs": config.total_epochs,
        "seed": config.seed,
        "config_digest": config.digest(),
        "tta": list(config.tta),
        "init": str(req.init) if req.init else None,
        "fit": fit,
        "git_commit": git_commit(),
        "triage_version": __version__,
        "torch": torch.__version__,
        "device": pick_device(config.device).type,
        "host": platform.node(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    thresholds = read_run_card(run).thresholds if (run / CARD).is_file() else {}
    card = RunCard(
        role=config.role,
        arch=config.arch,
        input_size=config.input_size,
        channels=config.arch.in_chans,
        resize=config.resize,
        normalization=dict(config.normalization),
        checkpoint=checkpoint,
        thresholds=thresholds,
        provenance=provenance,
    )
    write_run_card(run, card)


def parse_fold(value: str, k: int) -> int | str:
    """``--fold``: an index 0..k-1, ``all`` or ``full``; DataError naming the valid values."""
    if value in ("all", "full"):
        return value
    try:
        index = int(value)
    except ValueError:
        raise DataError(f"--fold must be 0..{k - 1}, all or full; got {value!r}") from None
    if not 0 <= index < k:
        raise DataError(f"--fold {index} is out of range for --folds {k}; valid: 0..{k - 1}, all, or full")
    return index


def _train_fold(config: TrainConfig, req: RunRequest, fold: int) -> Path:
    """One fold run in a ``--jobs`` worker process (:func:`training.fold_jobs.train_folds`)."""
    name_fold_in_logs(fold)
    prep = prepare_for(config, req)  # the parent built the grid cache: this only maps it
    folds = assign_folds(prep, req.folds, req.data)
    return train_one(config, req, req.out / f"fold-{fold}", fold, prep, folds)


def train(config: TrainConfig, req: RunRequest, hooks: Sequence[Hook] = ()) -> list[Path]:
    """``triage train ROLE``: one fold, every fold (``all``), or all images (``full``). Returns the runs."""
    if req.folds < 2 and req.fold != "full":
        raise DataError(
            f"--folds must be at least 2 (got {req.folds}); use --fold full to train on all images"
        )
    fold = req.fold if isinstance(req.fold, str) else parse_fold(str(req.fold), req.folds)
    if req.jobs != 1 and fold != "all":
        raise DataError("--jobs trains the folds of a cross-validation side by side: use it with --fold all")
    if fold == "full":
        return [train_one(config, req, req.out, None, hooks=hooks)]
    if fold != "all":
        return [train_one(config, req, req.out, int(fold), hooks=hooks)]
    if req.out.exists() and any(req.out.iterdir()) and not req.resume and distributed.world()[0] == 0:
        raise DataError(f"{req.out} is not empty; pass --resume to continue, or choose another --out")
    jobs = check_jobs(req.jobs, config.device, req.folds)
    if jobs > 1 and (hooks or distributed.world()[1] > 1):
        raise DataError("--jobs runs folds in separate processes: not with training hooks or under torchrun")
    prep = prepare_for(config, req)  # the grid cache, built once for every fold
    check_problems(prep, req, req.out)
    folds = assign_folds(prep, req.folds, req.data)
    if jobs > 1:
        by_fold = train_folds(config, req, jobs, list(range(req.folds)), _train_fold)
        runs = [by_fold[k] for k in range(req.folds)]
    else:
        runs = []
        for k in range(req.folds):
            logger.info("fold %d of %d", k, req.folds)
            runs.append(train_one(config, req, req.out / f"fold-{k}", k, prep, folds, hooks))
    if distributed.world()[0] != 0:
        return runs
    summary = {
        "role": config.role,
        "folds": req.folds,
        "runs": [r.name for r in runs],
        "best": [read_run_card(r).provenance.get("fit", {}) for r in runs],
    }
    (req.out / CV_JSON).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return runs


def fold_runs(path: Path) -> list[Path]:
    """The fold runs of a CV folder (``fold-K`` subfolders with a card), or [path] for a single run."""
    if (path / CARD).is_file():
        return [path]
    runs = sorted((p for p in path.glob("fold-*") if (p / CARD).is_file()), key=lambda p: int(p.name[5:]))
    if not runs:
        raise DataError(f"{path}: neither a run folder ({CARD}) nor a CV folder (fold-K runs)")
    return runs
