"""The saliency U-Net as a trainer task: its forward pass, its data (with target heatmaps) and its
validation metrics.

Batches carry ``target`` (N, 1, H, W) in [0, 1] and ``has_target`` (N,): the phantom's reading heatmap
(``--target heatmap``), the blurred pneumothorax mask (``--target lesion``) or the eye-gaze heatmap
(``--target gaze``), all on the model grid (:mod:`training.saliency.targets`). The target moves with the
image under the geometric augmentations (it is one of the sample's maps).

Validation: the classifier head's AUC (the metric that picks the best epoch) and, on validation images
with a target, the decoder map's KL / CC / SIM against it (:mod:`triage.saliency_metrics`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from training.augment import Sample
from training.data import GridDataset
from training.losses import Batch, Outputs
from training.models import SaliencyNet
from training.saliency.options import TARGETS, TargetKind
from training.saliency.targets import (
    DEFAULT_GAZE_SIGMA,
    Fixation,
    TargetError,
    gaze_heatmap,
    lesion_heatmap,
)
from training.tasks import Task
from triage import metrics
from triage import saliency_metrics as sm
from triage.cascade.preprocess import normalise

MAP_SIDE = 64  # validation maps are compared at most at this side (enough for KL/CC/SIM, cheap)


@dataclass(frozen=True)
class TargetSpec:
    """Where the target heatmaps come from: ``kind``, σ in source pixels (lesion blur / gaze fixations),
    and for ``gaze`` the fixations per image id (read from the CSV before training)."""

    kind: TargetKind = "heatmap"
    sigma: float = DEFAULT_GAZE_SIGMA
    fixations: Mapping[str, Sequence[Fixation]] | None = None

    def __post_init__(self) -> None:
        if self.kind not in TARGETS:
            raise TargetError(f"--target must be one of {TARGETS}, got {self.kind!r}")
        if self.sigma <= 0 and self.kind != "heatmap":
            raise TargetError(f"--target-sigma must be > 0 pixels, got {self.sigma}")


class SaliencyDataset(GridDataset):
    """A :class:`GridDataset` whose samples also hold ``target`` (see the module docstring)."""

    def __init__(self, grids: Any, spec: Any, target: TargetSpec, augment: Any = None, seed: int = 0) -> None:
        super().__init__(grids, spec, augment, seed, maps=("mask",))
        self.target = target
        if target.kind == "gaze" and not target.fixations:
            raise TargetError("--target gaze needs --gaze-csv FILE (image_id,x,y[,weight] fixations)")
        if target.kind == "heatmap" and grids.heatmaps is None:
            raise TargetError(
                f"--target heatmap needs reading heatmaps (heatmaps/<id>.png, as `triage synth` writes), but "
                f"{grids.data_root} has none: use --target lesion or --target gaze"
            )

    def _target(self, row: int, sample: Sample) -> NDArray[np.float32]:
        g, kind = self.grids, self.target.kind
        if kind == "heatmap":
            return sample["heatmap"]
        if kind == "lesion":
            return lesion_heatmap(g.mask(row), g.geometry(row), self.target.sigma)
        fixations = (self.target.fixations or {}).get(g.ids[row])
        if not fixations:
            return np.zeros(g.grid.size, np.float32)
        return gaze_heatmap(list(fixations), g.geometry(row), self.target.sigma)

    def has_target(self, row: int) -> bool:
        """Whether image ``row`` has a target (gaze: any fixation; heatmap: a heatmap file)."""
        kind = self.target.kind
        if kind == "heatmap":
            return bool(self.grids.items[row].get("has_heatmap", True))
        if kind == "lesion":
            return True
        return bool((self.target.fixations or {}).get(self.grids.ids[row]))

    def sample(self, row: int) -> Sample:
        g = self.grids
        out: Sample = {"image": g.image(row), "mask": g.mask(row).astype(np.float32)}
        if self.target.kind == "heatmap":
            assert g.heatmaps is not None
            out["heatmap"] = g.heatmaps[row].astype(np.float32) / np.float32(255)
        out["target"] = self._target(row, out).astype(np.float32)
        out.pop("heatmap", None)
        return out

    def __getitem__(self, key: Any) -> dict[str, torch.Tensor]:  # type: ignore[override]
        row, position = (key, 0) if isinstance(key, (int, np.integer)) else key
        sample = self.sample(int(row))
        if self.pipeline.transforms:
            rng = np.random.default_rng([self.seed, self.epoch, int(position), int(row)])
            sample = self.pipeline(sample, rng)
        image = np.clip(sample["image"], 0.0, 1.0)
        return {
            "image": torch.from_numpy(normalise(image, self.spec)),
            "label": torch.tensor([float(self.grids.labels[row])]),
            "row": torch.tensor(int(row)),
            "mask": torch.from_numpy(np.ascontiguousarray(sample["mask"]))[None],
            "target": torch.from_numpy(np.ascontiguousarray(np.clip(sample["target"], 0.0, 1.0)))[None],
            "has_target": torch.tensor(self.has_target(int(row))),
        }


@dataclass(frozen=True)
class SaliencyTask(Task):
    """Role ``saliency``: forward gives ``map_logits``, ``logit`` and the head's ``cam``."""

    role: str = "saliency"

    def encoder(self, model: nn.Module) -> nn.Module:
        assert isinstance(model, SaliencyNet)
        return model.encoder

    def forward(self, model: nn.Module, batch: Batch) -> Outputs:
        assert isinstance(model, SaliencyNet)
        maps, logit, cam = model.forward_all(batch["image"])
        return {"map_logits": maps, "logit": logit, "cam": cam}

    def loss_inputs(self, outputs: Outputs, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        return outputs["logit"], batch["label"]

    def score(self, outputs: Outputs) -> NDArray[np.float32]:
        """(N, 1 + s·s): P(pneumothorax), then the decoder's map (sigmoid) pooled to s = MAP_SIDE."""
        p = torch.sigmoid(outputs["logit"].float()).reshape(-1, 1)
        maps = torch.sigmoid(outputs["map_logits"].float())
        side = min(MAP_SIDE, maps.shape[-1], maps.shape[-2])
        pooled = torch.nn.functional.adaptive_avg_pool2d(maps, (side, side)).flatten(1)
        out: NDArray[np.float32] = torch.cat([p, pooled], dim=1).detach().cpu().numpy()
        return out

    @property
    def validation_keys(self) -> tuple[str, ...]:
        return ("label", "target", "has_target")

    def validation_metrics(self, scores: list[NDArray[np.float32]], batches: list[Batch]) -> dict[str, float]:
        packed = np.concatenate(scores)
        p = packed[:, 0]
        y = np.concatenate([b["label"].numpy().reshape(-1) for b in batches]) > 0.5
        out: dict[str, float] = {"auc": metrics.roc_auc(p, y) if y.any() and not y.all() else float("nan")}
        if not all("target" in b for b in batches):
            return out
        side = round(float(np.sqrt(packed.shape[1] - 1)))
        maps = packed[:, 1:].reshape(-1, side, side)
        targets = torch.cat([b["target"] for b in batches]).float()
        targets = torch.nn.functional.adaptive_avg_pool2d(targets, (side, side))[:, 0].numpy()
        valid = np.concatenate([b["has_target"].numpy().reshape(-1) for b in batches]).astype(bool)
        rows = [sm.map_scores(maps[i], target=targets[i]) for i in np.flatnonzero(valid)]
        for key in ("kl", "cc", "sim"):
            values = [r[key] for r in rows if np.isfinite(r[key])]
            out[f"map_{key}"] = float(np.mean(values)) if values else float("nan")
        return out
