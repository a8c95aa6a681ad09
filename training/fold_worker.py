"""The start of a ``--jobs`` worker process (:mod:`training.fold_jobs`), kept apart from it.

A spawned worker imports the module of its initializer before running it; this one imports nothing
heavy, so the log filter is in place before torch, timm and fastai are imported (their import-time
warnings would otherwise reach the console unfiltered).
"""

from __future__ import annotations

from typing import Any


def init_worker(slots: Any, threads: int, level: int) -> None:
    """Runs once in each worker: its job slot (GPU index), thread count and the parent's log set-up
    (the same filter: third-party warnings, which may quote header values, are withheld)."""
    from triage.logsafe import configure

    configure(level)
    import torch

    torch.set_num_threads(threads)
    slot = slots.get(timeout=60)
    if torch.cuda.is_available():
        torch.cuda.set_device(slot % max(1, torch.cuda.device_count()))
