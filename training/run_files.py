"""The files of a run folder that training writes: their names, weights written atomically, the
optimizer state made loadable with ``weights_only=True``, and ``metrics.csv`` + TensorBoard scalars."""

from __future__ import annotations

import csv
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastcore.foundation import L
from safetensors.torch import save_file
from torch import nn

logger = logging.getLogger(__name__)

STATE = "state.pt"
LAST = "last.safetensors"
BEST = "best.safetensors"
METRICS_CSV = "metrics.csv"


def atomic_save_weights(model: nn.Module, path: Path, metadata: dict[str, str]) -> None:
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(weights, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def plain_state(value: Any) -> Any:
    """The fastai optimizer's state with numpy scalars as Python numbers (``weights_only`` loading)."""
    if isinstance(value, dict):
        return {k: plain_state(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, L)):
        return [plain_state(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    return value


class Logs:
    """metrics.csv (one row per epoch; columns grow when new ones appear) and TensorBoard scalars."""

    def __init__(self, run: Path) -> None:
        self.csv = run / METRICS_CSV
        self.tb: Any = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run / "tb"))
        except ImportError:  # tensorboard missing: CSV only
            logger.warning("tensorboard is not installed: logging to %s only", self.csv)

    def scalar(self, name: str, value: float, step: int) -> None:
        if self.tb is not None and math.isfinite(value):
            self.tb.add_scalar(name, value, step)

    def epoch(self, row: dict[str, Any], step: int) -> None:
        rows: list[dict[str, Any]] = []
        header: list[str] = []
        if self.csv.exists():
            with self.csv.open(newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                rows, header = list(reader), list(reader.fieldnames or [])
        # a resumed epoch replaces a row an interrupted run may have left
        rows = [r for r in rows if str(r.get("epoch")) != str(row["epoch"])] + [row]
        keys = list(dict.fromkeys([*header, *row]))
        tmp = self.csv.with_suffix(".tmp")
        with tmp.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, keys, restval="")
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, self.csv)
        for key, value in row.items():
            if isinstance(value, (int, float)) and key != "epoch":
                self.scalar(f"epoch/{key}", float(value), step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
