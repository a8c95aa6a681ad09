"""DistributedDataParallel for the fastai ``Learner`` (started by ``torchrun``).

fastai's own ``fastai.distributed.DistributedTrainer`` needs Hugging Face ``accelerate`` (not installed;
importing the module fails without it), its ``DistributedDL`` broadcasts the epoch's indices with NCCL
(CUDA only), and it re-batches a plain torch DataLoader, which would lose this project's balanced,
resumable epoch order. So the process group is set up here (gloo on CPU, NCCL on CUDA; fastai's
``rank_distrib`` / ``num_distrib`` read the same environment), every process gets its share of each
global batch from :class:`training.data.EpochSampler`, and this callback wraps the model in DDP for the
fit. Validation outputs are gathered across processes by the run callback; only rank 0 writes
checkpoints and logs. BatchNorm statistics stay per process (no SyncBatchNorm on CPU).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from fastai.callback.core import Callback
from fastai.torch_core import num_distrib, rank_distrib
from torch.nn.parallel import DistributedDataParallel


def world() -> tuple[int, int]:
    """(rank, world size) of this process (0, 1 when not launched distributed)."""
    return rank_distrib(), max(1, num_distrib())


def setup(device: torch.device) -> None:
    """Join the process group named by the environment (RANK, WORLD_SIZE, MASTER_ADDR/PORT)."""
    if num_distrib() > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", rank_distrib()))
            if local >= torch.cuda.device_count():
                raise ValueError(
                    f"process {local} of this machine has no GPU: {torch.cuda.device_count()} CUDA "
                    f"device(s) here; start at most that many processes (torchrun --nproc-per-node)"
                )
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend, init_method="env://")


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class DDPCallback(Callback):
    """Wrap the learner's model in DistributedDataParallel for the fit, unwrap it afterwards."""

    order = 11

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def before_fit(self) -> None:
        ids: Any = [self.device.index or 0] if self.device.type == "cuda" else None
        self.learn.model = DistributedDataParallel(self.learn.model, device_ids=ids)

    def after_fit(self) -> None:
        if isinstance(self.learn.model, DistributedDataParallel):
            self.learn.model = self.learn.model.module
