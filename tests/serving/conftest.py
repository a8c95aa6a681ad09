"""Shared fixtures: a tiny bundle whose gate passes about 40% of the synthetic images, and a set of
synthetic studies (128 px, one CR/DX image each) made once per session."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.bundles import build_tiny_bundle
from triage.bundle import load_bundle, seal
from triage.cascade.items import load_item
from triage.cascade.models import CascadeModels
from triage.io.dicom import ReadPolicy
from triage.synth.dataset import SynthRequest, synthesize

SIZE = 128


@dataclass(frozen=True)
class Studies:
    root: Path
    files: list[Path]  # one per study, sorted

    def copy(self, target: Path, n: int, start: int = 0) -> list[Path]:
        """Copy ``n`` studies (SIIM layout: <study>/<series>/<sop>.dcm) under ``target``."""
        copied = []
        for path in self.files[start : start + n]:
            dest = target / path.relative_to(self.root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
            copied.append(dest)
        return copied


def make_studies(root: Path, n: int, seed: int) -> Studies:
    synthesize(SynthRequest(root, studies=n, size=SIZE, seed=seed), workers=1)
    images = root / "dicom-images-train"
    return Studies(images, sorted(images.rglob("*.dcm")))


@pytest.fixture(scope="session")
def studies(tmp_path_factory: pytest.TempPathFactory) -> Studies:
    return make_studies(tmp_path_factory.mktemp("synth"), 60, seed=5)


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory, studies: Studies) -> Path:
    """A tiny bundle with the gate at the 60th percentile of the classifier on ``studies``."""
    root = tmp_path_factory.mktemp("bundle")
    build_tiny_bundle(root, cls_size=64, seg_size=64, min_area=10, bottom=0.5)
    loaded = load_bundle(root)
    models = CascadeModels(loaded, "cpu", threads=1)
    items = [load_item(str(p), loaded, ReadPolicy()) for p in studies.files]
    x = np.stack([it.gate_input.x for it in items if it.gate_input is not None])
    prob, _ = models.gate(x, use_tta=True)
    card = json.loads((root / "card.json").read_text())
    card["thresholds"]["gate"] = float(np.quantile(prob, 0.6))
    (root / "card.json").write_text(json.dumps(card))
    seal(root)
    return root
