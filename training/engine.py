"""Training on fastai's ``Learner``: ``fit_one_cycle`` (cosine one-cycle on the learning rate, momentum /
Adam β1 cycling 0.95 → 0.85 → 0.95), fastai's RAdam / Adam / SGD, its mixed precision (``to_fp16`` /
``to_bf16``, CUDA only) and channels-last callbacks, its progress bars and Recorder, and this project's
callbacks for what a hospital run needs beyond that:

* :class:`RunCallback` — the run folder: ``metrics.csv`` (one row per epoch) and TensorBoard scalars,
  ``best.safetensors`` / ``last.safetensors`` (the state dict of ``CamClassifier`` / ``Segmenter``, what
  export reads), ``state.pt`` for resume (weights, the fastai optimizer's state, epoch and next batch, best
  metric: a dict of tensors and numbers read back with ``torch.load(weights_only=True)``, never a pickled
  object), validation metrics (AUC; Dice per image at p > 0.5) reduced across processes, stop requests
  (Ctrl-C / SIGTERM stop after the current batch), and the per-step ``hooks``;
* :class:`TaskLoss` — the main loss plus the config's ``extra_losses`` terms (heatmap loss, saliency
  terms, the CAM–mask term): extra objectives plug in as loss terms without touching the loop;
* :class:`training.distributed.DDPCallback` — DistributedDataParallel (started by ``torchrun``).

``state.pt`` is written at the end of every epoch and when training is interrupted; it is removed when
the run finishes. A resumed run continues at the saved batch with the saved optimizer state and schedule
position, so no batch is repeated or lost.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from fastai.callback.core import Callback, CancelValidException
from fastai.callback.progress import ProgressCallback
from fastai.callback.schedule import fit_one_cycle  # noqa: F401  (patches Learner.fit_one_cycle)
from fastai.data.core import DataLoaders
from fastai.learner import Learner, ValueMetric
from fastai.optimizer import SGD, Adam, RAdam
from fastai.torch_core import params
from fastcore.foundation import L
from torch import nn

from training.config import TrainConfig
from training.data import EpochSampler, GridDataset, Key, fastai_loader, plain_batches
from training.losses import Batch, Outputs, WeightedTerm, build_extra_terms, build_loss
from training.run_files import BEST, LAST, STATE, Logs, atomic_save_weights, plain_state
from training.tasks import Task

logger = logging.getLogger(__name__)

Hook = Callable[["Trainer", int, int], None]  # (trainer, epoch, batches done) after each optimizer step


class Interrupted(Exception):
    """Training stopped by the user; the state to resume from is saved."""

    def __init__(self, epoch: int, step: int) -> None:
        super().__init__(f"interrupted at epoch {epoch + 1}, batch {step}")
        self.epoch, self.step = epoch, step

    def __reduce__(self) -> tuple[type[Interrupted], tuple[int, int]]:  # sent back by a --jobs worker
        return (Interrupted, (self.epoch, self.step))


class _Stop(Exception):
    """Raised out of fastai's loop (not one of its Cancel exceptions) when a stop was requested."""


@dataclass
class FitResult:
    best_metric: float
    best_epoch: int
    epochs: int
    seconds: float
    images_per_s: float
    history: list[dict[str, Any]] = field(default_factory=list)


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "--device cuda asked for, but torch sees no CUDA device here; use --device cpu or auto"
        )
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def opt_func(config: TrainConfig) -> Callable[..., Any]:
    """fastai's optimizer for ``config.optimizer``: RAdam and AdamW with decoupled weight decay, Adam with
    L2 weight decay (as torch's Adam), SGD with momentum. β2 = 0.99; β1 follows the one-cycle momentum."""
    if config.optimizer == "radam":
        return partial(RAdam, sqr_mom=0.99, decouple_wd=True)
    if config.optimizer in ("adam", "adamw"):
        return partial(Adam, sqr_mom=0.99, decouple_wd=config.optimizer == "adamw")
    return partial(SGD, decouple_wd=True)


class TaskModule(nn.Module):
    """The network seen by fastai: ``forward(batch dict) -> outputs dict`` (the task's forward pass)."""

    def __init__(self, task: Task, net: nn.Module) -> None:
        super().__init__()
        self.task, self.net = task, net

    def forward(self, batch: Batch) -> Outputs:
        return self.task.forward(self.net, batch)


class TaskLoss:
    """fastai's ``loss_func(pred, batch)``: the main loss, plus the weighted extra terms while training.

    The extra terms' logs of the last batch are kept in :attr:`last_logs` for the run's metrics."""

    def __init__(self, task: Task, main: nn.Module, terms: Sequence[WeightedTerm], net: nn.Module) -> None:
        self.task, self.main, self.terms, self.net = task, main, list(terms), net
        self.last_logs: dict[str, float] = {}

    def to(self, device: Any) -> TaskLoss:
        self.main.to(device)
        return self

    def __call__(self, outputs: Outputs, batch: Batch) -> torch.Tensor:
        loss: torch.Tensor = self.main(*self.task.loss_inputs(outputs, batch))
        self.last_logs = {}
        if self.terms and self.net.training:  # validation loss = the main loss (terms may need grads)
            self.last_logs["main_loss"] = float(loss.detach())
            for term in self.terms:
                value, logs = term(self.net, batch, outputs)
                loss = loss + value
                self.last_logs.update(logs)
        return loss


def _gather(value: Any) -> list[Any]:
    """``value`` from every process (a one-element list without torch.distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


class RunCallback(Callback):
    """The run folder, resume, validation metrics and stop requests around fastai's loop (see module doc).

    ``offset`` is the first epoch of the current ``fit_one_cycle`` phase (``freeze_epochs`` for the
    unfrozen phase), so epochs are numbered over the whole run."""

    order = -5  # after TrainEvalCallback (-10) has set the schedule's position, before the scheduler (60)

    def __init__(self, trainer: Trainer, sampler: EpochSampler, logs: Logs | None) -> None:
        self.trainer, self.sampler, self.logs = trainer, sampler, logs
        self.offset, self.start_epoch, self.start_step, self.frozen = 0, 0, 0, False
        self.best, self.best_epoch = -math.inf, -1
        self.history: list[dict[str, Any]] = []
        self.train_seconds, self.images_seen = 0.0, 0
        self.values: dict[str, float] = {}

    @property
    def global_epoch(self) -> int:
        return self.offset + int(self.learn.epoch)

    def metric(self) -> float:
        return self.values.get(self.trainer.task.metric, float("nan"))

    # --- training ---------------------------------------------------------------------------------

    def before_epoch(self) -> None:
        epoch = self.global_epoch
        self.skipped = epoch < self.start_epoch  # fastai's SkipToEpoch (order 70) cancels the epoch
        if self.skipped:
            return
        start = self.start_step if epoch == self.start_epoch else 0
        self.trainer.train_set.set_epoch(epoch)
        self.sampler.set_epoch(epoch, start)
        self.step, self.sums, self.n_batches, self.n_images = start, {}, 0, 0
        self.t_epoch = time.perf_counter()

    def before_train(self) -> None:
        if not self.skipped and self.step:  # resumed part-way: the schedule continues where it stopped
            n = len(self.sampler)
            self.learn.pct_train = (self.learn.epoch + self.step / n) / self.learn.n_epoch
            self.learn.train_iter = self.learn.epoch * n + self.step

    def after_batch(self) -> None:
        if not self.training:
            self._accumulate_validation()
            return
        loss = float(self.learn.loss.detach())
        if not math.isfinite(loss):
            raise FloatingPointError(f"the loss became {loss}; lower the learning rate (--lr)")
        logs = {"loss": loss, **self.trainer.loss.last_logs}
        for k, v in logs.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.n_batches += 1
        self.n_images += len(self.learn.xb[0]["row"]) * self.trainer.world
        self.step += 1
        global_step = self.global_epoch * len(self.sampler) + self.step
        if self.logs is not None:
            for k, v in logs.items():
                self.logs.scalar(f"train/{k}", v, global_step)
            self.logs.scalar("train/lr", self.lr, global_step)
        for hook in self.trainer.hooks:
            hook(self.trainer, self.global_epoch, self.step)
        if self.trainer.stop_requested:
            self.trainer.save_state(self.global_epoch, self.step, self)
            raise _Stop("stop requested")

    @property
    def lr(self) -> float:
        return float(self.learn.opt.hypers[-1]["lr"])

    # --- validation -------------------------------------------------------------------------------

    def before_validate(self) -> None:
        self.values = {}
        self.seconds = time.perf_counter() - self.t_epoch
        if not self.trainer.val_rows:
            raise CancelValidException
        self.scores: list[Any] = []
        self.kept: list[Batch] = []
        self.val_loss = 0.0

    def _accumulate_validation(self) -> None:
        batch = self.learn.yb[0]
        self.scores.append(self.trainer.task.score(self.learn.pred))
        keys = getattr(self.trainer.task, "validation_keys", ("label", "mask"))
        self.kept.append({k: batch[k].detach().cpu() for k in keys if k in batch})
        self.val_loss += float(self.learn.loss.detach()) * len(batch["row"])

    def after_validate(self) -> None:
        if not self.trainer.val_rows:
            return
        parts = _gather((self.scores, self.kept, self.val_loss))
        scores = [s for p in parts for s in p[0]]
        kept = [b for p in parts for b in p[1]]
        self.values = self.trainer.task.validation_metrics(scores, kept)
        self.values["val_loss"] = sum(p[2] for p in parts) / max(1, len(self.trainer.val_rows))

    def after_epoch(self) -> None:
        if getattr(self, "skipped", False):
            return
        sums: dict[str, float] = {}
        for part in _gather(self.sums):  # every process's sums (one dict without torch.distributed)
            for k, v in part.items():
                sums[k] = sums.get(k, 0.0) + v
        n_batches = sum(_gather(self.n_batches))
        seconds = getattr(self, "seconds", time.perf_counter() - self.t_epoch)
        self.train_seconds += seconds
        self.images_seen += self.n_images
        epoch = self.global_epoch
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "frozen": int(self.frozen),
            "train_loss": sums.get("loss", float("nan")) / max(1, n_batches),
            **self.values,
            "lr": self.lr,
            "images_per_s": self.n_images / max(1e-9, seconds),
            "seconds": seconds,
            **{f"train_{k}": v / max(1, n_batches) for k, v in sums.items() if k != "loss"},
        }
        self.history.append(row)
        metric = self.metric()
        score = metric if math.isfinite(metric) else -self.values.get("val_loss", row["train_loss"])
        improved = score > self.best or self.best_epoch < 0
        if improved:
            self.best, self.best_epoch = score, epoch + 1
        if self.trainer.rank == 0:
            assert self.logs is not None
            self.logs.epoch(row, (epoch + 1) * len(self.sampler))
            logger.info(
                "epoch %d/%d: %s",
                epoch + 1,
                self.trainer.config.total_epochs,
                ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float)),
            )
            if improved:
                atomic_save_weights(self.trainer.model, self.trainer.run / BEST, {"epoch": str(epoch + 1)})
        self.trainer.save_state(epoch + 1, 0, self)


@dataclass
class Trainer:
    """One run's training on a fastai ``Learner`` (see the module docstring); :meth:`fit` → FitResult."""

    config: TrainConfig
    task: Task
    model: nn.Module
    train_set: GridDataset
    train_rows: Sequence[int]
    val_set: GridDataset | None
    val_rows: Sequence[int]
    run: Path
    progress: bool = True
    hooks: Sequence[Hook] = ()
    extra_terms: list[WeightedTerm] = field(default_factory=list)
    rank: int = 0
    world: int = 1

    def __post_init__(self) -> None:
        self.device = pick_device(self.config.device)
        self.amp = self.config.amp and self.device.type == "cuda"
        if not self.extra_terms:
            self.extra_terms = build_extra_terms(self.config)
        self.stop_requested = False

    # --- the learner ------------------------------------------------------------------------------

    def learner(self) -> tuple[Learner, RunCallback]:
        cfg = self.config
        labels = self.train_set.grids.labels
        pos = int(labels[list(self.train_rows)].sum())
        pos_weight = (len(self.train_rows) - pos) / max(1, pos) if cfg.balance == "pos_weight" else None
        fraction = (
            cfg.positive_fraction if cfg.balance == "sampler" and self.task.role != "segmenter" else None
        )
        sampler = EpochSampler(
            self.train_rows, labels, cfg.batch_size, cfg.seed, fraction, self.rank, self.world
        )
        val_rows = list(self.val_rows)[self.rank :: self.world]
        val_batches: list[list[Key] | list[int]] = list(plain_batches(val_rows, cfg.batch_size * 2))
        dls = DataLoaders(
            fastai_loader(self.train_set, sampler, cfg.workers),
            fastai_loader(self.val_set or self.train_set, val_batches, cfg.workers),
            device=self.device,
        )
        self.loss = TaskLoss(self.task, build_loss(cfg, pos_weight), self.extra_terms, self.model)
        module = TaskModule(self.task, self.model)
        callback = RunCallback(self, sampler, Logs(self.run) if self.rank == 0 else None)
        learn = Learner(
            dls,
            module,
            loss_func=self.loss,
            opt_func=opt_func(cfg),
            lr=cfg.lr,
            splitter=lambda m: [params(self.task.encoder(m.net)), _rest(m.net, self.task.encoder(m.net))],
            cbs=[callback],
            metrics=[ValueMetric(callback.metric, self.task.metric)] if self.val_rows else None,
            wd=cfg.weight_decay,
            moms=(cfg.moms[0], cfg.moms[1], cfg.moms[0]),
            train_bn=True,
            path=self.run,
        )
        if not self.progress or self.rank != 0:
            learn.remove_cb(ProgressCallback)
            learn.logger = lambda *a, **k: None
        if self.amp:
            learn.to_bf16() if cfg.amp_dtype == "bf16" else learn.to_fp16()
        if self.device.type == "cuda":
            from fastai.callback.channelslast import ChannelsLast

            learn.add_cb(ChannelsLast())
        if self.world > 1:
            from training.distributed import DDPCallback

            learn.add_cb(DDPCallback(self.device))
        return learn, callback

    # --- resume state -----------------------------------------------------------------------------

    def save_state(self, epoch: int, step: int, cb: RunCallback) -> None:
        if self.rank != 0:
            return
        state = {
            "epoch": epoch,
            "step": step,
            "best": cb.best,
            "best_epoch": cb.best_epoch,
            "digest": self.config.digest(),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": plain_state(cb.learn.opt.state_dict()),
            "torch_rng": torch.get_rng_state(),
            "train_seconds": cb.train_seconds,
            "images_seen": cb.images_seen,
            "history": [{k: v for k, v in h.items() if isinstance(v, (int, float, str))} for h in cb.history],
        }
        tmp = self.run / (STATE + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.run / STATE)
        atomic_save_weights(self.model, self.run / LAST, {"epoch": str(epoch), "step": str(step)})

    def _load_state(self) -> dict[str, Any]:
        path = self.run / STATE
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("digest") != self.config.digest():
            raise ValueError(
                f"{self.run}: the run was started with another configuration; resume with the same "
                "preset/--config/--set options, or start a new --out"
            )
        self.model.load_state_dict(state["model"])
        torch.set_rng_state(state["torch_rng"])
        return state

    # --- fit --------------------------------------------------------------------------------------

    def fit(self, resume: bool = False) -> FitResult:
        cfg = self.config
        self.run.mkdir(parents=True, exist_ok=True)
        self.model.to(self.device)
        for term in self.extra_terms:  # terms that need something of the data say so before training starts
            check = getattr(term.term, "check_data", None)
            if check is not None:
                check(self.train_set.grids, self.train_rows)
        state = self._load_state() if resume and (self.run / STATE).exists() else None
        learn, cb = self.learner()
        if state is not None:
            cb.start_epoch, cb.start_step = int(state["epoch"]), int(state["step"])
            cb.best, cb.best_epoch = float(state["best"]), int(state["best_epoch"])
            cb.history = list(state["history"])
            cb.train_seconds, cb.images_seen = float(state["train_seconds"]), int(state["images_seen"])
            logger.info("resuming %s at epoch %d, batch %d", self.run, cb.start_epoch + 1, cb.start_step)
        t_start = time.perf_counter()
        self.stop_requested = False
        previous = self._catch_signals()
        phases = [(0, cfg.freeze_epochs, True), (cfg.freeze_epochs, cfg.epochs, False)]
        try:
            for first, length, frozen in phases:
                if length == 0 or cb.start_epoch >= first + length:
                    continue
                learn.create_opt()
                learn.freeze() if frozen else learn.unfreeze()
                skip = max(0, cb.start_epoch - first)
                if state is not None and (skip or (cb.start_epoch == first and cb.start_step)):
                    saved = state["optimizer"]
                    learn.opt.load_state_dict({"state": saved["state"], "hypers": L(saved["hypers"])})
                cb.offset, cb.frozen = first, frozen
                learn.fit_one_cycle(
                    length,
                    lr_max=cfg.lr,
                    div=cfg.div_factor,
                    div_final=cfg.final_div_factor,
                    pct_start=cfg.pct_start,
                    start_epoch=skip,
                )
        except (KeyboardInterrupt, _Stop):
            if cb.logs is not None:
                cb.logs.close()
            epoch = cb.global_epoch
            raise Interrupted(epoch, getattr(cb, "step", 0)) from None
        finally:
            self._restore_signals(previous)
        if cb.logs is not None:
            cb.logs.close()
        if not self.val_rows and self.rank == 0:  # no validation: the last weights are the best
            atomic_save_weights(self.model, self.run / BEST, {"epoch": str(cfg.total_epochs)})
            cb.best_epoch = cfg.total_epochs
        if self.rank == 0:
            (self.run / STATE).unlink(missing_ok=True)
        total = time.perf_counter() - t_start
        return FitResult(
            cb.best,
            cb.best_epoch,
            cfg.total_epochs,
            total,
            cb.images_seen / max(1e-9, cb.train_seconds),
            cb.history,
        )

    def _catch_signals(self) -> dict[int, Any]:
        """SIGINT/SIGTERM ask the loop to stop after the current batch (a second SIGINT stops at once)."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def request(signum: int, frame: Any) -> None:
            if self.stop_requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.stop_requested = True
            logger.warning("stopping after this batch; the run can be resumed with --resume")

        return {sig: signal.signal(sig, request) for sig in (signal.SIGINT, signal.SIGTERM)}

    @staticmethod
    def _restore_signals(previous: dict[int, Any]) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _rest(net: nn.Module, encoder: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``net`` outside ``encoder`` (the head / decoder: fastai's last param group)."""
    inside = {id(p) for p in encoder.parameters()}
    return [p for p in net.parameters() if id(p) not in inside]
