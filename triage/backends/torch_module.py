"""Development backend: wrap a PyTorch module as a `Model` (needs the training extra; imported lazily)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray


class TorchModel:
    """Calls `module(batch)` under `torch.inference_mode()`; `names` label its output(s) in order."""

    def __init__(self, module: Callable[..., Any], names: Sequence[str], device: str = "cpu") -> None:
        import torch  # the training extra; never imported by the runtime unless this class is used

        self._torch = torch
        self.module = module
        self.names = list(names)
        self.device = torch.device(device)
        self.provider = f"torch-{self.device.type}"

    def __call__(self, batch: NDArray[np.float32]) -> dict[str, NDArray[np.float32]]:
        torch = self._torch
        with torch.inference_mode():
            out = self.module(torch.from_numpy(np.ascontiguousarray(batch)).to(self.device))
        values = out if isinstance(out, (tuple, list)) else [out]
        return {n: v.detach().float().cpu().numpy() for n, v in zip(self.names, values, strict=True)}
