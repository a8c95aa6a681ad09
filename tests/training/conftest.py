"""Shared synthetic data and a tiny cross-validated experiment for the training tests (built once)."""

from __future__ import annotations

from pathlib import Path

import pytest

from triage.synth.dataset import SynthRequest, synthesize


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 studies at 128 px, half positive (the tiny preset trains on a 64-px grid)."""
    out = tmp_path_factory.mktemp("train-data") / "set"
    synthesize(SynthRequest(out, studies=24, positive_fraction=0.5, size=128, seed=3), workers=1)
    return out


@pytest.fixture(scope="session")
def synth_test(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("test-data") / "set"
    synthesize(SynthRequest(out, studies=10, positive_fraction=0.5, size=128, seed=4), workers=1)
    return out


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("grid-cache")


@pytest.fixture(scope="session")
def tiny_experiment(
    tmp_path_factory: pytest.TempPathFactory, synth_data: Path, synth_test: Path, cache_dir: Path
) -> Path:
    """`triage experiment` with the tiny preset and 3 folds: 9 runs, thresholds, table, test reports."""
    from training.experiment import run

    out = tmp_path_factory.mktemp("experiment") / "exp"
    run(synth_data, out, synth_test, "tiny", 3, [], cache_dir, progress=False)
    return out
