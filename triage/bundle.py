"""The self-describing model bundle: a folder with `card.json` and the model files it names.

Inference reads only the bundle: input sizes, normalisation, TTA, thresholds, output names and
provenance all come from the card, never from constants in code. The card's `content_hash` covers
every model file and the card itself (minus that field) and is checked at load.

Card (format ``triage-bundle/1``)::

    {"format": "triage-bundle/1", "name": "...", "version": "...",
     "models": {"classifier": MODEL, "segmenter": MODEL, "saliency": MODEL (optional)},
     "tta": ["none", "hflip"],
     "thresholds": {"gate": 0.5, "top": 0.75, "min_area": 200, "bottom": 0.3, "min_component": 25,
                    "grid": "model", "chosen_by": {"data": "...", "metric": "...", "value": 0.0}},
     "adaptive_tta": {"gate_margin": 0.03, "chosen_by": {...}},   # optional: export/adaptive_tta.py
     "provenance": {...free-form: data, folds, epochs, git commit...},
     "content_hash": "sha256:..."}

    MODEL = {"file": "classifier.onnx", "runtime": "onnx" | "tensorrt", "sha256": "...",
             "input_name": "image", "input_size": [224, 224], "channels": 1, "resize": "letterbox",
             "normalization": {"kind": "meanstd", "mean": [0.5], "std": [0.25]} | {"kind": "minmax"},
             "outputs": {"logit": "logit", "cam": "cam"}}      # classifier
             "outputs": {"probability": "probability"}         # segmenter
             "outputs": {"map": "map", "logit": "logit"}       # saliency model (logit optional)
             # optional, written by `triage export`:
             "precision": "fp32",                              # the name of this (base) variant
             "requires": {...}, "parity": {...},               # what it needs to run; export parity figures
             "variants": {"int8": VARIANT, "tensorrt-fp16": VARIANT},
             "default_variant": {"cpu": "int8", "cuda": "tensorrt-fp16"},
             "int8_refused": {"because": ..., "tolerance": {...}, "tried": [...]}}  # no INT8 recipe passed

    VARIANT = {"file": "classifier.int8.onnx", "runtime": "onnx" | "tensorrt", "precision": "int8",
               "sha256": "...", "requires": {...}, "parity": {...}, ...}

A variant is the same model in another file, precision or runtime: it shares the base's input contract
and outputs. Which one runs is chosen by :func:`select_variant` (the card's ``default_variant`` for the
device, unless the user names one). `min_area` and `min_component` count pixels on the segmenter's input
grid (``grid: model``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from triage.errors import ErrorCode, TriageError

FORMAT = "triage-bundle/1"
CARD = "card.json"
TTA_CHOICES = ("none", "hflip", "vflip")
RUNTIMES = ("onnx", "tensorrt")
ROLES = ("classifier", "segmenter", "saliency")
REQUIRED_OUTPUTS = {"classifier": ("logit",), "segmenter": ("probability",), "saliency": ("map",)}


def _corrupt(message: str) -> TriageError:
    return TriageError(ErrorCode.BUNDLE_CORRUPT, message)


@dataclass(frozen=True)
class Normalization:
    kind: Literal["meanstd", "minmax"]
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()


@dataclass(frozen=True)
class ModelSpec:
    role: str
    path: Path
    runtime: Literal["onnx", "tensorrt"]
    sha256: str
    input_name: str
    input_size: tuple[int, int]  # (height, width)
    channels: int
    resize: Literal["letterbox", "stretch"]
    normalization: Normalization
    outputs: dict[str, str]  # meaning -> graph output name
    precision: str = "fp32"  # the variant's name: "fp32" for the base, "int8", "tensorrt-fp16", ...
    variants: dict[str, ModelSpec] = field(default_factory=dict)  # other variants, by name
    default_variant: dict[str, str] = field(default_factory=dict)  # device kind ("cpu"/"cuda") -> name
    raw: dict[str, Any] = field(default_factory=dict)  # the card's entry (requires, parity, speed, ...)

    @property
    def variant_names(self) -> list[str]:
        return [self.precision, *self.variants]


@dataclass(frozen=True)
class Thresholds:
    gate: float
    top: float
    min_area: int
    bottom: float
    min_component: int
    chosen_by: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AdaptiveTTA:
    """Adaptive test-time augmentation (card key ``adaptive_tta``): the gate's other TTA passes run only on
    images whose un-flipped probability lies within ``gate_margin`` of the gate threshold; ``chosen_by``
    says on which validation predictions the margin was chosen (``python -m export.adaptive_tta``)."""

    gate_margin: float
    chosen_by: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Bundle:
    root: Path
    name: str
    version: str
    content_hash: str
    classifier: ModelSpec
    segmenter: ModelSpec
    saliency: ModelSpec | None
    tta: tuple[str, ...]
    thresholds: Thresholds
    provenance: dict[str, Any]
    card: dict[str, Any]
    adaptive_tta: AdaptiveTTA | None = None

    @property
    def label(self) -> str:
        """`name@version#hash8`, the id written into every result record."""
        return f"{self.name}@{self.version}#{self.content_hash.removeprefix('sha256:')[:8]}"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def content_hash(card: dict[str, Any], root: Path) -> str:
    """sha256 over the canonical JSON of the card without `content_hash`, then each model file's hash."""
    h = hashlib.sha256()
    body = {k: v for k, v in card.items() if k != "content_hash"}
    h.update(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
    for role in sorted(card.get("models", {})):
        h.update(file_sha256(root / card["models"][role]["file"]).encode())
    for role in sorted(card.get("models", {})):  # variants: absent from older cards (same hash there)
        variants = card["models"][role].get("variants") or {}
        for name in sorted(variants):
            h.update(file_sha256(root / variants[name]["file"]).encode())
    return f"sha256:{h.hexdigest()}"


def seal(root: Path) -> str:
    """Fill in every model's `sha256` and the card's `content_hash` (the export step's last act)."""
    path = root / CARD
    card = json.loads(path.read_text(encoding="utf-8"))
    for spec in card["models"].values():
        spec["sha256"] = file_sha256(root / spec["file"])
        for variant in (spec.get("variants") or {}).values():
            variant["sha256"] = file_sha256(root / variant["file"])
    card["content_hash"] = content_hash(card, root)
    path.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return str(card["content_hash"])


def _file(where: str, raw: dict[str, Any]) -> tuple[str, Literal["onnx", "tensorrt"]]:
    rel = str(raw["file"])
    if Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise _corrupt(f"{where}.file must be a path inside the bundle, got {rel!r}")
    runtime = raw.get("runtime", "onnx")
    if runtime not in RUNTIMES:
        raise _corrupt(f"{where}.runtime must be one of {RUNTIMES}, got {runtime!r}")
    return rel, runtime


def _variants(role: str, raw: dict[str, Any], base: ModelSpec, root: Path) -> dict[str, ModelSpec]:
    found = raw.get("variants") or {}
    if not isinstance(found, dict):
        raise _corrupt(f"models.{role}.variants must be an object of name -> variant")
    out: dict[str, ModelSpec] = {}
    for name, var in found.items():
        where = f"models.{role}.variants.{name}"
        if not isinstance(var, dict) or name == base.precision:
            raise _corrupt(f"{where} must be an object, named other than the base {base.precision!r}")
        rel, runtime = _file(where, var)
        out[str(name)] = replace(
            base,
            path=root / rel,
            runtime=runtime,
            sha256=str(var.get("sha256", "")),
            precision=str(name),
            variants={},
            default_variant={},
            raw=dict(var),
        )
    defaults = {str(k): str(v) for k, v in (raw.get("default_variant") or {}).items()}
    unknown = {k: v for k, v in defaults.items() if v != base.precision and v not in out}
    if unknown:
        raise _corrupt(f"models.{role}.default_variant names {unknown}; variants: {[base.precision, *out]}")
    return out


def _model(role: str, raw: Any, root: Path) -> ModelSpec:
    if not isinstance(raw, dict):
        raise _corrupt(f"models.{role} must be an object")
    try:
        rel, runtime = _file(f"models.{role}", raw)
        norm = raw.get("normalization", {"kind": "minmax"})
        if norm.get("kind") not in ("meanstd", "minmax"):
            raise _corrupt(f"models.{role}.normalization.kind must be meanstd or minmax, got {norm}")
        outputs = {str(k): str(v) for k, v in raw["outputs"].items()}
        missing = [k for k in REQUIRED_OUTPUTS[role] if k not in outputs]
        if missing:
            raise _corrupt(f"models.{role}.outputs lacks {missing}; it has {sorted(outputs)}")
        size = tuple(int(v) for v in raw["input_size"])
        if len(size) != 2 or min(size) < 8:
            raise _corrupt(f"models.{role}.input_size must be [height, width] >= 8, got {size}")
        resize = raw.get("resize", "letterbox")
        if resize not in ("letterbox", "stretch"):
            raise _corrupt(f"models.{role}.resize must be letterbox or stretch, got {resize!r}")
        base = ModelSpec(
            role=role,
            path=root / rel,
            runtime=runtime,
            sha256=str(raw.get("sha256", "")),
            input_name=str(raw.get("input_name", "image")),
            input_size=(size[0], size[1]),
            channels=int(raw.get("channels", 1)),
            resize=resize,
            normalization=Normalization(
                norm["kind"], tuple(norm.get("mean", ())), tuple(norm.get("std", ()))
            ),
            outputs=outputs,
            precision=str(raw.get("precision", "fp32")),
            raw={k: v for k, v in raw.items() if k != "variants"},
        )
        return replace(
            base,
            variants=_variants(role, raw, base, root),
            default_variant={str(k): str(v) for k, v in (raw.get("default_variant") or {}).items()},
        )
    except KeyError as exc:
        raise _corrupt(f"models.{role} lacks the field {exc}") from exc
    except (TypeError, ValueError, AttributeError) as exc:
        raise _corrupt(f"models.{role} is malformed: {exc}") from exc


def load_bundle(root: Path, *, verify: bool = True) -> Bundle:
    """Read and check a bundle; raises TriageError: BUNDLE_MISSING, BUNDLE_CORRUPT or BUNDLE_HASH_MISMATCH."""
    card_path = root / CARD
    if not card_path.is_file():
        raise TriageError(ErrorCode.BUNDLE_MISSING, f"no {CARD} in {root}: not a model bundle")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _corrupt(f"{card_path} is not readable JSON: {exc}") from exc
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        found = card.get("format") if isinstance(card, dict) else type(card).__name__
        raise _corrupt(f"{card_path}: format must be {FORMAT!r}, got {found!r}")
    models = card.get("models")
    if not isinstance(models, dict) or not {"classifier", "segmenter"} <= set(models):
        raise _corrupt(f"{card_path}: models must hold classifier and segmenter")
    unknown = sorted(set(models) - set(ROLES))
    if unknown:
        raise _corrupt(f"{card_path}: unknown model roles {unknown}; valid: {list(ROLES)}")
    specs = {role: _model(role, raw, root) for role, raw in models.items()}
    every = [v for spec in specs.values() for v in (spec, *spec.variants.values())]
    for spec in every:
        if not spec.path.is_file():
            raise TriageError(
                ErrorCode.BUNDLE_MISSING, f"model file {spec.path} named by the card is missing"
            )
    if verify:
        for spec in every:
            if spec.sha256 and file_sha256(spec.path) != spec.sha256:
                raise TriageError(
                    ErrorCode.BUNDLE_HASH_MISMATCH,
                    f"{spec.path.name} does not match its sha256 in the card: changed or damaged",
                )
        expected = card.get("content_hash")
        actual = content_hash(card, root)
        if expected != actual:
            raise TriageError(
                ErrorCode.BUNDLE_HASH_MISMATCH,
                f"bundle content hash is {actual}, the card says {expected}: changed or damaged",
            )
    tta = tuple(card.get("tta", ["none"]))
    bad = [t for t in tta if t not in TTA_CHOICES]
    if bad or not tta:
        raise _corrupt(f"tta must be a non-empty list of {TTA_CHOICES}, got {list(tta)}")
    try:
        th = card["thresholds"]
        thresholds = Thresholds(
            float(th["gate"]),
            float(th["top"]),
            int(th["min_area"]),
            float(th["bottom"]),
            int(th.get("min_component", 0)),
            dict(th.get("chosen_by", {})),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise _corrupt(f"thresholds are incomplete or malformed: {exc}") from exc
    adaptive = None
    if (raw := card.get("adaptive_tta")) is not None:
        try:
            adaptive = AdaptiveTTA(float(raw["gate_margin"]), dict(raw.get("chosen_by", {})))
        except (KeyError, TypeError, ValueError) as exc:
            raise _corrupt(f"adaptive_tta is malformed (needs gate_margin ≥ 0): {exc}") from exc
        if not adaptive.gate_margin >= 0:
            raise _corrupt(f"adaptive_tta.gate_margin is {adaptive.gate_margin}; it must be ≥ 0")
    return Bundle(
        root=root,
        name=str(card.get("name", root.name)),
        version=str(card.get("version", "0")),
        content_hash=str(card.get("content_hash", "")),
        classifier=specs["classifier"],
        segmenter=specs["segmenter"],
        saliency=specs.get("saliency"),
        tta=tta,
        thresholds=thresholds,
        provenance=dict(card.get("provenance", {})),
        card=card,
        adaptive_tta=adaptive,
    )


def select_variant(spec: ModelSpec, variant: str, device_kind: str) -> ModelSpec:
    """The variant of ``spec`` to run: ``variant`` by name, or with ``"auto"`` the card's
    ``default_variant`` for ``device_kind`` ("cpu" or "cuda"), else the base. Raises TriageError
    (INFERENCE_FAILED) naming the model and its variants when ``variant`` is not one of them."""
    if variant == "auto":
        variant = spec.default_variant.get(device_kind, spec.precision)
    if variant == spec.precision:
        return spec
    if variant not in spec.variants:
        raise TriageError(
            ErrorCode.INFERENCE_FAILED,
            f"the bundle's {spec.role} has no variant {variant!r}; it has {spec.variant_names} (or auto)",
        )
    return spec.variants[variant]
