"""The training loop: one-cycle schedule with cyclic momentum, mixed precision on CUDA, extra loss terms,
validation each epoch, CSV + TensorBoard logs, best/last weights as safetensors, and resume.

Checkpoints (in the run folder):

* ``last.safetensors`` / ``best.safetensors``: the model's state dict (what export reads);
* ``state.pt``: everything needed to resume — weights, optimizer, scheduler, grad scaler, epoch and the
  next batch, best metric — a dict of tensors and numbers read back with ``torch.load(weights_only=True)``
  (never a pickled object). Written at the end of each epoch, every ``checkpoint_minutes`` inside one,
  and when training is interrupted (Ctrl-C / SIGTERM); removed when the run finishes.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from training.config import TrainConfig
from training.data import EpochBatches, GridDataset, epoch_order, loader, plain_batches
from training.losses import Batch, WeightedTerm, build_extra_terms, build_loss
from training.tasks import Task

logger = logging.getLogger(__name__)

STATE = "state.pt"
LAST = "last.safetensors"
BEST = "best.safetensors"
METRICS_CSV = "metrics.csv"
Hook = Callable[["Trainer", int, int], None]  # (trainer, epoch, step) after each optimizer step


class Interrupted(Exception):
    """Training stopped by the user; the state to resume from is saved."""

    def __init__(self, epoch: int, step: int) -> None:
        super().__init__(f"interrupted at epoch {epoch + 1}, batch {step}")
        self.epoch, self.step = epoch, step


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


def build_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters()]
    beta1, wd = config.moms[0], config.weight_decay
    if config.optimizer == "radam":
        return torch.optim.RAdam(
            params, lr=config.lr, betas=(beta1, 0.99), weight_decay=wd, decoupled_weight_decay=True
        )
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, betas=(beta1, 0.99), weight_decay=wd)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, betas=(beta1, 0.99), weight_decay=wd)
    return torch.optim.SGD(params, lr=config.lr, momentum=beta1, weight_decay=wd)


def one_cycle(config: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
    """fastai's ``fit_one_cycle`` as torch's OneCycleLR: cosine warm-up over ``pct_start`` from
    lr/div_factor to lr, cosine annealing to lr/final_div_factor; momentum (β1) 0.95 → 0.85 → 0.95.

    torch needs at least two steps in each phase; very short runs (tests) get a schedule of 8 steps of
    which they use the first ones."""
    total = max(8, total_steps)
    pct = config.pct_start if abs(config.pct_start * total - 1) > 1e-6 else 1.5 / total
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=config.lr,
        total_steps=total,
        pct_start=pct,
        anneal_strategy="cos",
        cycle_momentum=True,
        base_momentum=config.moms[1],
        max_momentum=config.moms[0],
        div_factor=config.div_factor,
        final_div_factor=config.final_div_factor / config.div_factor,  # torch divides the initial lr
    )


def _atomic_save_weights(model: nn.Module, path: Path, metadata: dict[str, str]) -> None:
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(weights, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def _set_frozen(task: Task, model: nn.Module, frozen: bool) -> None:
    """Freeze the encoder except its BatchNorm layers (fastai's ``train_bn``), or unfreeze everything."""
    for p in model.parameters():
        p.requires_grad_(True)
    if frozen:
        for module in task.encoder(model).modules():
            if not isinstance(module, nn.modules.batchnorm._BatchNorm):
                for p in module.parameters(recurse=False):
                    p.requires_grad_(False)


class _Logs:
    """metrics.csv (one row per epoch) and TensorBoard scalars (per step and per epoch)."""

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
        new = not self.csv.exists()
        if not new:
            with self.csv.open(newline="", encoding="utf-8") as f:
                header = next(csv.reader(f), [])
            if header != list(row):  # columns changed (extra terms): rewrite with the union
                rows = list(csv.DictReader(self.csv.open(newline="", encoding="utf-8")))
                keys = list(dict.fromkeys([*header, *row]))
                with self.csv.open("w", newline="", encoding="utf-8") as f:
                    w = csv.DictWriter(f, keys)
                    w.writeheader()
                    w.writerows(rows)
                header = keys
        with self.csv.open("a", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, header if not new else list(row), restval="")
            if new:
                w.writeheader()
            w.writerow(row)
        for key, value in row.items():
            if isinstance(value, (int, float)) and key not in ("epoch",):
                self.scalar(f"epoch/{key}", float(value), step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


@dataclass
class Trainer:
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

    def __post_init__(self) -> None:
        self.device = pick_device(self.config.device)
        self.amp = self.config.amp and self.device.type == "cuda"
        if not self.extra_terms:
            self.extra_terms = build_extra_terms(self.config)

    # --- resume state -----------------------------------------------------------------------------

    def _save_state(
        self, epoch: int, step: int, best: float, best_epoch: int, history: list[dict[str, Any]]
    ) -> None:
        state = {
            "epoch": epoch,
            "step": step,
            "best": best,
            "best_epoch": best_epoch,
            "digest": self.config.digest(),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "scaler": self.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "history": [{k: v for k, v in h.items() if isinstance(v, (int, float, str))} for h in history],
        }
        tmp = self.run / (STATE + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.run / STATE)
        _atomic_save_weights(self.model, self.run / LAST, {"epoch": str(epoch), "step": str(step)})

    def _load_state(self) -> dict[str, Any]:
        path = self.run / STATE
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("digest") != self.config.digest():
            raise ValueError(
                f"{self.run}: the run was started with another configuration; resume with the same "
                "preset/--config/--set options, or start a new --out"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        return state

    # --- the loop ---------------------------------------------------------------------------------

    def _phase(self, epoch: int) -> tuple[int, int, bool]:
        """(first epoch, number of epochs, frozen) of the schedule phase that ``epoch`` is in."""
        f = self.config.freeze_epochs
        return (0, f, True) if epoch < f else (f, self.config.epochs, False)

    def _validate(self, loss_fn: nn.Module) -> dict[str, float]:
        if self.val_set is None or not self.val_rows:
            return {}
        self.model.eval()
        scores, kept, losses = [], [], []
        with torch.inference_mode():
            for batch in loader(
                self.val_set, plain_batches(self.val_rows, self.config.batch_size * 2), self.config.workers
            ):
                b = {k: v.to(self.device) for k, v in batch.items()}
                with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                    out = self.task.forward(self.model, b)
                    losses.append(float(loss_fn(*self.task.loss_inputs(out, b)).float()) * len(batch["row"]))
                scores.append(self.task.score(out))
                keys = getattr(self.task, "validation_keys", ("label", "mask"))
                kept.append({k: batch[k] for k in keys if k in batch})
        values = self.task.validation_metrics(scores, kept)
        values["val_loss"] = sum(losses) / max(1, len(self.val_rows))
        return values

    def fit(self, resume: bool = False) -> FitResult:
        cfg = self.config
        self.run.mkdir(parents=True, exist_ok=True)
        self.model.to(self.device)
        if self.device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)
        labels = self.train_set.grids.labels
        pos = int(labels[list(self.train_rows)].sum())
        pos_weight = (len(self.train_rows) - pos) / max(1, pos) if cfg.balance == "pos_weight" else None
        loss_fn = build_loss(cfg, pos_weight).to(self.device)
        for term in self.extra_terms:  # terms that need something of the data say so before training starts
            check = getattr(term.term, "check_data", None)
            if check is not None:
                check(self.train_set.grids, self.train_rows)
        self.optimizer = build_optimizer(cfg, self.model)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp)
        self.scheduler: Any = None
        fraction = (
            cfg.positive_fraction if cfg.balance == "sampler" and self.task.role != "segmenter" else None
        )
        steps_per_epoch = len(EpochBatches(list(self.train_rows), cfg.batch_size))
        start_epoch, start_step, best, best_epoch = 0, 0, -math.inf, -1
        history: list[dict[str, Any]] = []
        state: dict[str, Any] | None = None
        if resume and (self.run / STATE).exists():
            state = self._load_state()
            start_epoch, start_step = int(state["epoch"]), int(state["step"])
            best, best_epoch = float(state["best"]), int(state["best_epoch"])
            history = list(state["history"])
            logger.info("resuming %s at epoch %d, batch %d", self.run, start_epoch + 1, start_step)
        logs = _Logs(self.run)
        t_start, images_seen, train_seconds = time.perf_counter(), 0, 0.0
        last_save = time.monotonic()
        epoch, step = start_epoch, start_step
        self._stop_requested = False
        previous = self._catch_signals()
        try:
            for epoch in range(start_epoch, cfg.total_epochs):
                first, length, frozen = self._phase(epoch)
                if self.scheduler is None or epoch == first:
                    self.scheduler = one_cycle(cfg, self.optimizer, length * steps_per_epoch)
                    resumed_in_phase = epoch == start_epoch and (epoch != first or start_step > 0)
                    if state is not None and resumed_in_phase and state["scheduler"]:
                        self.scheduler.load_state_dict(state["scheduler"])
                        # the optimizer's lr/β1 of the saved step (OneCycleLR's constructor reset them)
                        self.optimizer.load_state_dict(state["optimizer"])
                _set_frozen(self.task, self.model, frozen)
                self.train_set.set_epoch(epoch)
                order = epoch_order(self.train_rows, labels, cfg.seed, epoch, fraction)
                start = start_step if epoch == start_epoch else 0
                batches = EpochBatches(order, cfg.batch_size, start)
                self.model.train()
                sums: dict[str, float] = {}
                n_batches, t_epoch, n_images = 0, time.perf_counter(), 0
                bar = _Bar(
                    self.progress,
                    f"{self.task.role} epoch {epoch + 1}/{cfg.total_epochs}",
                    len(batches.batches),
                    start,
                )
                with bar:
                    for step, batch in enumerate(loader(self.train_set, batches, cfg.workers), start=start):
                        logs_step = self._train_step(batch, loss_fn)
                        for k, v in logs_step.items():
                            sums[k] = sums.get(k, 0.0) + v
                        n_batches += 1
                        n_images += len(batch["row"])
                        global_step = epoch * steps_per_epoch + step
                        for k, v in logs_step.items():
                            logs.scalar(f"train/{k}", v, global_step)
                        logs.scalar("train/lr", self.optimizer.param_groups[0]["lr"], global_step)
                        rate = n_images / max(1e-9, time.perf_counter() - t_epoch)
                        bar.advance(f"loss {sums['loss'] / n_batches:.4f}  {rate:.1f} img/s")
                        step += 1
                        for hook in self.hooks:
                            hook(self, epoch, step)
                        if self._stop_requested:
                            raise KeyboardInterrupt
                        if time.monotonic() - last_save > 60 * cfg.checkpoint_minutes:
                            self._save_state(epoch, step, best, best_epoch, history)
                            last_save = time.monotonic()
                seconds = time.perf_counter() - t_epoch
                train_seconds += seconds
                images_seen += n_images
                values = self._validate(loss_fn)
                metric = values.get(self.task.metric, float("nan"))
                row: dict[str, Any] = {
                    "epoch": epoch + 1,
                    "frozen": int(frozen),
                    "train_loss": sums.get("loss", float("nan")) / max(1, n_batches),
                    **{k: v for k, v in values.items()},
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "images_per_s": n_images / max(1e-9, seconds),
                    "seconds": seconds,
                    **{f"train_{k}": v / max(1, n_batches) for k, v in sums.items() if k != "loss"},
                }
                history.append(row)
                logs.epoch(row, (epoch + 1) * steps_per_epoch)
                logger.info(
                    "epoch %d/%d: %s",
                    epoch + 1,
                    cfg.total_epochs,
                    ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float)),
                )
                score = metric if math.isfinite(metric) else -values.get("val_loss", row["train_loss"])
                if score > best or best_epoch < 0:
                    best, best_epoch = score, epoch + 1
                    _atomic_save_weights(self.model, self.run / BEST, {"epoch": str(epoch + 1)})
                step = 0
                self._save_state(epoch + 1, 0, best, best_epoch, history)
                last_save = time.monotonic()
        except KeyboardInterrupt:
            self._save_state(epoch, step, best, best_epoch, history)
            logs.close()
            raise Interrupted(epoch, step) from None
        finally:
            self._restore_signals(previous)
        logs.close()
        if self.val_set is None or not self.val_rows:  # no validation: the last weights are the best
            _atomic_save_weights(self.model, self.run / BEST, {"epoch": str(cfg.total_epochs)})
            best_epoch = cfg.total_epochs
        (self.run / STATE).unlink(missing_ok=True)
        total = time.perf_counter() - t_start
        return FitResult(
            best, best_epoch, cfg.total_epochs, total, images_seen / max(1e-9, train_seconds), history
        )

    def _catch_signals(self) -> dict[int, Any]:
        """SIGINT/SIGTERM ask the loop to stop after the current batch (a second SIGINT stops at once)."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def request(signum: int, frame: Any) -> None:
            if self._stop_requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self._stop_requested = True
            logger.warning("stopping after this batch; the run can be resumed with --resume")

        return {sig: signal.signal(sig, request) for sig in (signal.SIGINT, signal.SIGTERM)}

    @staticmethod
    def _restore_signals(previous: dict[int, Any]) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def _train_step(self, batch: Batch, loss_fn: nn.Module) -> dict[str, float]:
        b = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        if self.device.type == "cuda":
            b["image"] = b["image"].contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            out = self.task.forward(self.model, b)
            loss = loss_fn(*self.task.loss_inputs(out, b))
            logs = {"main_loss": float(loss.detach())} if self.extra_terms else {}
            for term in self.extra_terms:
                value, term_logs = term(self.model, b, out)
                loss = loss + value
                logs.update(term_logs)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        logs["loss"] = float(loss.detach())
        if not np.isfinite(logs["loss"]):
            raise FloatingPointError(f"the loss became {logs['loss']}; lower the learning rate (--lr)")
        return logs


class _Bar:
    """A rich progress bar for one epoch (or nothing when ``enabled`` is False)."""

    def __init__(self, enabled: bool, title: str, total: int, start: int) -> None:
        self.enabled = enabled
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn(title),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                transient=False,
            )
            self.task = self.progress.add_task(title, total=total, completed=start, info="")

    def __enter__(self) -> _Bar:
        if self.enabled:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.progress.stop()

    def advance(self, info: str) -> None:
        if self.enabled:
            self.progress.update(self.task, advance=1, info=info)
