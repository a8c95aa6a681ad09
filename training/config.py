"""Hyper-parameters are data: one frozen dataclass per run, built from a preset, a YAML file and command
line overrides (in that order), and written next to the run as ``config.yaml``.

Presets (``seed`` | ``cpu`` | ``small`` | ``tiny``) × roles (``classifier`` | ``segmenter`` | ``baseline``):

* ``seed``: the thesis's models (../shared/research/seeds.md, A) — timm ``resnext50_32x4d`` at 224 px with
  soft-F1, RAdam and one-cycle for 127 epochs (Cutout from epoch 70); smp ``Unet`` with a ResNet-34 encoder
  at 256 px, Jaccard loss, Adam and one-cycle for 18 epochs. Meant for a GPU.
* ``cpu``: a gate that can see a pneumothorax, on 2 CPU cores: 256 px (where a medium pneumothorax's
  lucency spans a few dozen pixels), a ResNet-10-T with a quarter of its channels (about 0.06 CPU-s per
  training image, a fifth of ResNet-18 at this size), BCE, balanced batches, 4 epochs; meant for
  ``triage synth`` sets of >= 3,000 studies (docs/training.md, "The cpu preset").
* ``small``: ResNet-18-class encoders at 128 px, for experiments on a 2-core CPU.
* ``tiny``: seconds per run, for tests and the demo (64 px).

``baseline`` is the segmenter's configuration trained on all images instead of positives only.
Overrides use dotted keys: ``--set augment.rotate_deg=5 --set lr=3e-4``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from training.models import ArchSpec
from training.options import Preset

PRESETS: tuple[str, ...] = get_args(Preset)  # the names, declared once in training/options.py
ROLES = ("classifier", "segmenter", "baseline", "saliency")  # saliency: training/saliency/
CLASSIFIER_LOSSES = ("soft_f1", "bce", "focal")
SEGMENTER_LOSSES = ("jaccard", "dice", "bce", "focal", "lovasz", "combo")
OPTIMIZERS = ("radam", "adam", "adamw", "sgd")
BALANCES = ("none", "sampler", "pos_weight")
# Grey-level ImageNet statistics: what timm uses when it folds RGB weights into one input channel.
IMAGENET_GREY = {"kind": "meanstd", "mean": [0.449], "std": [0.226]}


class ConfigError(ValueError):
    """A bad configuration value; the message names the key, the value and the valid options."""


@dataclass(frozen=True)
class AugmentConfig:
    """The thesis's augmentations (probability, magnitude), applied to the image and its masks alike.

    ``warp``: symmetric perspective warp, corners moved by up to ``warp_magnitude`` of the half-side;
    ``rotate_deg``: uniform in ±; ``zoom``: scale range; ``brightness``/``contrast``: fastai's lighting
    in logit space (brightness adds logit(b), contrast multiplies by c). ``cutout_from_epoch``: Cutout is
    switched on from this (0-based) epoch; None = never. ``extra``: further transforms by registered name
    (:data:`training.augment.TRANSFORMS`), e.g. ``[{"name": "gaussian_noise", "p": 0.5, "sigma": 0.08}]``.
    """

    flip_p: float = 0.5
    warp_p: float = 0.75
    warp_magnitude: float = 0.2
    rotate_p: float = 0.75
    rotate_deg: float = 10.0
    zoom_p: float = 0.75
    zoom: tuple[float, float] = (1.0, 1.1)
    brightness_p: float = 0.75
    brightness: tuple[float, float] = (0.4, 0.6)
    contrast_p: float = 0.75
    contrast: tuple[float, float] = (0.8, 1.25)
    cutout_from_epoch: int | None = None
    cutout_holes: tuple[int, int] = (1, 4)
    cutout_size: tuple[float, float] = (0.05, 0.2)
    extra: tuple[dict[str, Any], ...] = ()
    enabled: bool = True


@dataclass(frozen=True)
class TrainConfig:
    """One run's resolved configuration. Learning-rate schedule: one cycle with cyclic momentum (fastai's
    ``fit_one_cycle``: warm-up ``pct_start`` from lr/div_factor to lr, cosine down to lr/final_div_factor;
    momentum / Adam β1 cycles 0.95 → 0.85 → 0.95)."""

    role: str
    preset: str
    arch: ArchSpec
    input_size: tuple[int, int]
    resize: str = "letterbox"
    normalization: dict[str, Any] = field(default_factory=lambda: dict(IMAGENET_GREY))
    loss: str = "soft_f1"
    loss_options: dict[str, Any] = field(default_factory=dict)
    extra_losses: tuple[dict[str, Any], ...] = ()
    optimizer: str = "radam"
    lr: float = 1e-3
    weight_decay: float = 0.01
    epochs: int = 10
    freeze_epochs: int = 0
    batch_size: int = 32
    pct_start: float = 0.25
    div_factor: float = 25.0
    final_div_factor: float = 1e5
    moms: tuple[float, float] = (0.95, 0.85)
    balance: str = "sampler"
    positive_fraction: float = 0.5
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    tta: tuple[str, ...] = ("none", "hflip")
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    amp_dtype: str = "fp16"
    workers: int = 0
    select: str = "best"

    def __post_init__(self) -> None:
        _check("role", self.role, ROLES)
        _check("preset", self.preset, (*PRESETS, "custom"))
        losses = CLASSIFIER_LOSSES if self.role in ("classifier", "saliency") else SEGMENTER_LOSSES
        _check("loss", self.loss, losses)
        _check("optimizer", self.optimizer, OPTIMIZERS)
        _check("balance", self.balance, BALANCES)
        _check("device", self.device, ("auto", "cpu", "cuda"))
        _check("select", self.select, ("best", "last"))
        _check("amp_dtype", self.amp_dtype, ("fp16", "bf16"))
        _check("resize", self.resize, ("letterbox", "stretch"))
        kind = self.role if self.role in ("classifier", "saliency") else "segmenter"
        if self.arch.kind != kind:
            raise ConfigError(f"role {self.role} needs a {kind} arch, got kind {self.arch.kind!r}")
        for name, value, lo in (
            ("epochs", self.epochs, 1),
            ("batch_size", self.batch_size, 1),
            ("freeze_epochs", self.freeze_epochs, 0),
            ("workers", self.workers, 0),
        ):
            if not isinstance(value, int) or value < lo:
                raise ConfigError(f"{name} must be an integer >= {lo}, got {value!r}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0 < self.pct_start < 1:
            raise ConfigError(f"pct_start must be in (0, 1), got {self.pct_start}")
        if not 0 < self.positive_fraction < 1:
            raise ConfigError(f"positive_fraction must be in (0, 1), got {self.positive_fraction}")
        if len(self.input_size) != 2 or min(self.input_size) < 32:
            raise ConfigError(f"input_size must be [height, width] >= 32, got {list(self.input_size)}")
        bad = [t for t in self.tta if t not in ("none", "hflip", "vflip")]
        if bad or not self.tta:
            raise ConfigError(f"tta must be a non-empty list of none, hflip, vflip; got {list(self.tta)}")

    @property
    def total_epochs(self) -> int:
        return self.freeze_epochs + self.epochs

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["arch"] = self.arch.to_dict()
        plain: dict[str, Any] = _plain(out)
        return plain

    def digest(self) -> str:
        """A hash of everything that changes training (not device/workers/checkpoint cadence)."""
        d = self.to_dict()
        for key in ("device", "workers", "epochs"):
            d.pop(key, None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _check(name: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"{name} must be one of {list(valid)}, got {value!r}")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


TINY_CLS = ArchSpec("classifier", "resnet10t")
TINY_SEG = ArchSpec(
    "segmenter", "tu-resnet10t", options={"encoder_depth": 3, "decoder_channels": [32, 16, 8]}
)
SMALL_CLS = ArchSpec("classifier", "resnet18")
SMALL_SEG = ArchSpec("segmenter", "resnet18", options={"decoder_channels": [128, 64, 32, 16, 16]})
SEED_CLS = ArchSpec("classifier", "resnext50_32x4d")
# ResNet-10-T with a quarter of its channels: timm's ResNet takes the stage widths and the stem width.
LEAN_RESNET: dict[str, Any] = {"channels": [32, 48, 96, 192], "stem_width": 16}
CPU_CLS = ArchSpec("classifier", "resnet10t", options=dict(LEAN_RESNET))
CPU_SEG_OPTIONS: dict[str, Any] = {**LEAN_RESNET, "encoder_depth": 4, "decoder_channels": [64, 32, 16, 8]}
CPU_SEG = ArchSpec("segmenter", "tu-resnet10t", options=CPU_SEG_OPTIONS)
SEED_SEG = ArchSpec("segmenter", "resnet34")
TINY_SAL = ArchSpec("saliency", "tu-resnet10t", options={"encoder_depth": 3, "decoder_channels": [32, 16, 8]})
SMALL_SAL = ArchSpec("saliency", "resnet18", options={"decoder_channels": [128, 64, 32, 16, 16]})
SEED_SAL = ArchSpec("saliency", "efficientnet-b0")


# Horizontal flips only: with the thesis's augmentations, even at half strength, a classifier trained from
# random weights on a few hundred images for 10 epochs stayed near chance (see docs/training.md).
FLIP_ONLY = AugmentConfig(flip_p=0.5, warp_p=0.0, rotate_p=0.0, zoom_p=0.0, brightness_p=0.0, contrast_p=0.0)
# The thesis's augmentations at half strength: at full strength, models trained from random weights on a
# few hundred images for ~10 epochs did not learn (validation AUC stayed at chance; see docs/training.md).
LIGHT_AUGMENT = AugmentConfig(
    flip_p=0.5,
    warp_p=0.5,
    warp_magnitude=0.1,
    rotate_p=0.5,
    rotate_deg=5.0,
    zoom_p=0.5,
    zoom=(1.0, 1.05),
    brightness_p=0.5,
    brightness=(0.45, 0.55),
    contrast_p=0.5,
    contrast=(0.9, 1.1),
)


DEFAULT_MAP_TERM: dict[str, Any] = {"name": "saliency_map", "weight": 1.0, "kind": "bce", "alpha": 1.0}


def _saliency_preset(name: str) -> TrainConfig:
    """The saliency U-Net (role ``saliency``; training/saliency/).

    * ``seed``: the source's generator (seeds.md C) — smp U-Net with an EfficientNet-b0 encoder and a
      classification head, 224 px; meant for a GPU.
    * ``small``: ResNet-18 encoder at 128 px, for a 2-core CPU.
    * ``tiny``: seconds, for tests.

    All: BCE on the head's logit, plus the ``saliency_map`` term (:mod:`training.saliency.terms`) with
    ``kind`` bce, α = 1 (decoder only) and weight 1 (γ = ½ in the source's γ·L_cls + (1 − γ)·L_map); Adam,
    one-cycle, balanced batches; the half-strength augmentation (``LIGHT_AUGMENT``: at full strength models
    from random weights did not learn on a 2-core budget), without Cutout (it would punch holes the target
    does not have); ``seed`` uses the thesis's full-strength set, still without Cutout.
    """
    common: dict[str, Any] = {
        "role": "saliency",
        "preset": name,
        "loss": "bce",
        "optimizer": "adam",
        "balance": "sampler",
        "positive_fraction": 0.5,
        "weight_decay": 1e-4,
        "extra_losses": (dict(DEFAULT_MAP_TERM),),
        "augment": LIGHT_AUGMENT,
    }
    if name == "seed":
        return TrainConfig(
            **{**common, "augment": AugmentConfig()},
            arch=SEED_SAL,
            input_size=(224, 224),
            epochs=30,
            batch_size=16,
            lr=1e-3,
        )
    if name == "small":
        return TrainConfig(**common, arch=SMALL_SAL, input_size=(128, 128), epochs=10, batch_size=16, lr=2e-3)
    return TrainConfig(**common, arch=TINY_SAL, input_size=(64, 64), epochs=2, batch_size=8, lr=3e-3)


def preset(name: str, role: str) -> TrainConfig:
    """The preset's configuration for ``role``."""
    _check("preset", name, PRESETS)
    _check("role", role, ROLES)
    if role == "saliency":
        if name == "cpu":
            raise ConfigError("the saliency role has no cpu preset; valid: seed, small, tiny")
        return _saliency_preset(name)
    if role == "classifier":
        common: dict[str, Any] = {
            "role": role,
            "preset": name,
            "loss": "soft_f1",
            "optimizer": "radam",
            "balance": "sampler",
            "positive_fraction": 0.5,
            "weight_decay": 0.01,
        }
        if name == "seed":
            return TrainConfig(
                **common,
                arch=SEED_CLS,
                input_size=(224, 224),
                epochs=127,
                batch_size=32,
                lr=1e-3,
                augment=AugmentConfig(cutout_from_epoch=70),
            )
        if name == "cpu":
            return TrainConfig(
                **{**common, "loss": "bce"},
                arch=CPU_CLS,
                input_size=(256, 256),
                epochs=4,
                batch_size=32,
                lr=2e-3,
                augment=FLIP_ONLY,
            )
        if name == "small":  # soft-F1 collapsed to "all positive" from random weights here: BCE (see docs)
            return TrainConfig(
                **{**common, "loss": "bce"},
                arch=SMALL_CLS,
                input_size=(128, 128),
                epochs=10,
                batch_size=32,
                lr=2e-3,
                augment=FLIP_ONLY,
            )
        return TrainConfig(**common, arch=TINY_CLS, input_size=(64, 64), epochs=2, batch_size=16, lr=2e-3)
    common = {
        "role": role,
        "preset": name,
        "loss": "jaccard",
        "optimizer": "adam",
        "balance": "none",
        "weight_decay": 1e-4,
    }
    if name == "seed":
        return TrainConfig(**common, arch=SEED_SEG, input_size=(256, 256), epochs=18, batch_size=16, lr=1e-3)
    if name == "cpu":
        return TrainConfig(
            **common, arch=CPU_SEG, input_size=(256, 256), epochs=8, batch_size=16, lr=1e-3, augment=FLIP_ONLY
        )
    if name == "small":
        return TrainConfig(
            **common,
            arch=SMALL_SEG,
            input_size=(128, 128),
            epochs=20,
            batch_size=16,
            lr=1e-3,  # 2e-3 diverged (the loss returned to 1: empty masks) in a probe
            augment=LIGHT_AUGMENT,
        )
    return TrainConfig(**common, arch=TINY_SEG, input_size=(64, 64), epochs=2, batch_size=8, lr=3e-3)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """``value`` (from YAML or a --set string) as the field's type."""
    if hint is str:
        return str(value)
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{key}: cannot parse {value!r} ({exc})") from exc
    if get_origin(hint) is tuple and isinstance(value, list):
        return tuple(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
        with contextlib.suppress(ValueError):
            value = float(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and not isinstance(value, float):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    return value


def _apply(obj: Any, updates: dict[str, Any], prefix: str = "") -> Any:
    hints = get_type_hints(type(obj))
    names = {f.name for f in fields(obj)}
    changes: dict[str, Any] = {}
    for key, value in updates.items():
        if key not in names:
            raise ConfigError(f"unknown config key {prefix + key!r}; valid: {sorted(names)}")
        current = getattr(obj, key)
        if isinstance(current, ArchSpec):
            merged = {**current.to_dict(), **value} if isinstance(value, dict) else value
            try:
                changes[key] = ArchSpec.from_dict(merged)
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"{prefix}{key}: {exc}") from exc
        elif dataclasses.is_dataclass(current) and isinstance(value, dict):
            changes[key] = _apply(current, value, f"{prefix}{key}.")
        else:
            changes[key] = _coerce(value, hints[key], prefix + key)
    try:
        return replace(obj, **changes)
    except TypeError as exc:
        raise ConfigError(f"bad value in {sorted(changes)}: {exc}") from exc


def _dotted(pairs: list[str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {pair!r}")
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value.strip()
    return tree


def resolve(
    role: str,
    preset_name: str = "small",
    yaml_file: Path | None = None,
    overrides: list[str] | None = None,
    **direct: Any,
) -> TrainConfig:
    """Preset → YAML file (a mapping of config keys) → ``--set`` pairs → direct keyword values (non-None)."""
    config = preset(preset_name, role)
    if yaml_file is not None:
        try:
            loaded = yaml.safe_load(Path(yaml_file).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"--config {yaml_file}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"--config {yaml_file}: expected a mapping of config keys")
        loaded.pop("role", None)
        config = _apply(config, loaded)
    if overrides:
        config = _apply(config, _dotted(overrides))
    values = {k: v for k, v in direct.items() if v is not None}
    if values:
        config = _apply(config, values)
    return config


def write_config(path: Path, config: TrainConfig) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
    tmp.replace(path)


def read_config(path: Path) -> TrainConfig:
    """A config written by :func:`write_config` (the run's ``config.yaml``)."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    base = preset("tiny", raw["role"])
    # checkpoint_minutes: runs written before training moved to fastai (state is now saved per epoch)
    raw = {k: v for k, v in raw.items() if k not in ("role", "checkpoint_minutes")}
    return _apply(base, raw)  # type: ignore[no-any-return]

