"""Fold-parallel training: ``--jobs N`` trains N fold runs of a cross-validation side by side.

Each fold run is independent (its own run folder, checkpoints and resume state), so N of them run in N
worker processes (``spawn``: torch is not fork-safe), each with ``usable cores ÷ N`` torch threads on
the CPU or its own GPU (job slot ``i`` → ``cuda:i``). The results are the fold runs ``train`` would
write one after another: same folds, same seeds, same files; only the wall time differs. Every worker
reads the grid cache that the parent built before starting them.

Ctrl-C reaches every worker (one process group): each saves its state after the current batch, and the
command stops with exit status 130; the same command with ``--resume`` continues every unfinished fold.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from pathlib import Path
from typing import Any

from training.config import TrainConfig
from training.engine import Interrupted
from training.fold_worker import init_worker
from training.prepare import DataError
from triage.system import usable_cores

logger = logging.getLogger(__name__)


class FoldsInterrupted(Interrupted):
    """Ctrl-C while fold runs were training side by side; each saved its state."""

    def __init__(self) -> None:
        Exception.__init__(self, "interrupted (each running fold saved its state after its current batch)")
        self.epoch = self.step = 0


def check_jobs(jobs: int, device: str, folds: int) -> int:
    """The number of worker processes for ``--jobs`` (at most one per fold); DataError when the machine
    has fewer CPU cores (CPU training) or GPUs (CUDA training) than jobs."""
    if jobs < 1:
        raise DataError(f"--jobs must be at least 1 (got {jobs})")
    if jobs == 1:
        return 1
    import torch

    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if cuda:
        gpus = torch.cuda.device_count()
        if jobs > gpus:
            raise DataError(
                f"--jobs {jobs} is more than the {gpus} CUDA device(s) here; use --jobs {gpus} or fewer"
            )
    elif jobs > usable_cores():
        raise DataError(
            f"--jobs {jobs} is more than the {usable_cores()} CPU core(s) this process may use; "
            f"use --jobs {usable_cores()} or fewer"
        )
    return min(jobs, folds)


def name_fold_in_logs(fold: int) -> None:
    """In a worker: prefix its log lines with the fold (the workers' lines interleave)."""
    for handler in logging.getLogger().handlers:
        handler.setFormatter(logging.Formatter(f"%(levelname)s fold {fold}: %(message)s"))


def train_folds(
    config: TrainConfig,
    req: Any,
    jobs: int,
    pending: list[int],
    train_fold: Callable[[TrainConfig, Any, int], Path],
) -> dict[int, Path]:
    """Train the folds ``pending`` of ``req`` in ``jobs`` worker processes with ``train_fold(config, req,
    fold)`` (a module-level function: it is sent to the workers by name); returns {fold: run}.
    Raises the first failure (DataError, ValueError, …) once the folds running beside it have finished,
    or Interrupted."""
    ctx = multiprocessing.get_context("spawn")
    slots: Any = ctx.Queue()
    for slot in range(jobs):
        slots.put(slot)
    threads = max(1, usable_cores() // jobs)
    worker_req = replace(req, progress=False)  # N progress bars would overwrite each other
    logger.info("training %d fold(s) in %d processes, %d thread(s) each", len(pending), jobs, threads)
    runs: dict[int, Path] = {}
    progress, task = _fold_progress(req.progress, len(pending))
    init_args = (slots, threads, logging.getLogger("training").getEffectiveLevel())
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=init_worker, initargs=init_args) as pool:
        # at most `jobs` folds are handed out at a time: a fold queued in the pool could not be cancelled
        # after Ctrl-C and would start training while the others stop
        todo = list(pending)
        running: dict[Future[Path], int] = {}
        try:
            while todo or running:
                while todo and len(running) < jobs:
                    fold = todo.pop(0)
                    running[pool.submit(train_fold, config, worker_req, fold)] = fold
                done, _ = wait(running, return_when=FIRST_EXCEPTION)
                for future in done:
                    fold = running.pop(future)
                    runs[fold] = future.result()
                    logger.info("fold %d finished: %s", fold, runs[fold])
                    if progress is not None:
                        progress.advance(task)
        except (KeyboardInterrupt, BrokenProcessPool) as exc:
            pool.shutdown(wait=True)  # the running folds save their state first
            raise FoldsInterrupted() from exc
        finally:
            if progress is not None:
                progress.stop()
    return runs


def _fold_progress(enabled: bool, total: int) -> tuple[Any, Any]:
    if not enabled:
        return None, None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("folds"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    task = progress.add_task("folds", total=total)
    progress.start()
    return progress, task
