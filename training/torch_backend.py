"""PyTorch backend for development: a torch module as the runtime's `Model` protocol
(:mod:`triage.backends`), so a training run goes through exactly the runtime's cascade (TTA, CAM
normalisation, triplet thresholds). It lives in `training/`, not in the runtime: `triage/` never imports
torch (docs/predict.md; tests/triage runs with torch blocked)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray


class TorchModel:
    """Calls `module(batch)` under `torch.inference_mode()`; `names` label its output(s) in order."""

    def __init__(self, module: Callable[..., Any], names: Sequence[str], device: str = "cpu") -> None:
        self.module = module
        self.names = list(names)
        self.device = torch.device(device)
        self.provider = f"torch-{self.device.type}"

    def __call__(self, batch: NDArray[np.float32]) -> dict[str, NDArray[np.float32]]:
        with torch.inference_mode():
            out = self.module(torch.from_numpy(np.ascontiguousarray(batch)).to(self.device))
        values = out if isinstance(out, (tuple, list)) else [out]
        return {n: v.detach().float().cpu().numpy() for n, v in zip(self.names, values, strict=True)}
