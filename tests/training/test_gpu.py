"""The CUDA path: mixed precision (autocast + GradScaler) and channels-last. Skipped without a GPU (this
project's CI has none); run with `pytest -m gpu` on a GPU machine."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from training.config import resolve
from training.run import RunRequest, train
from training.run_format import read_run_card

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_tiny_segmenter_trains_on_cuda_with_mixed_precision(synth_data: Path, cache_dir: Path,
                                                            tmp_path: Path) -> None:
    config = resolve("segmenter", "tiny", device="cuda")
    assert config.amp
    train(config, RunRequest(synth_data, tmp_path / "run", 3, 0, cache_dir=cache_dir, progress=False))
    card = read_run_card(tmp_path / "run")
    assert card.provenance["device"] == "cuda"
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert all(float(r["images_per_s"]) > 0 for r in rows)
