"""The cascade's networks, built from a plain description (``ArchSpec``) so that a run folder can
rebuild them.

Shared by training (``training/``), export (``export/``) and the saliency work: one factory, one set of
module definitions, so that what is trained is exactly what is exported.

* :class:`CamClassifier`: a timm backbone without pooling or head (``num_classes=0, global_pool=""``) →
  feature map A (N, C, h, w) → global average pool → ``nn.Linear(C, 1)`` → logit (N, 1).  Because the
  head is GAP + linear, the class-activation map ``cam = w·A + b`` (a 1×1 convolution with the head's
  weights, (N, 1, h, w)) satisfies ``mean_hw(cam) == logit`` exactly, and HiResCAM / Grad-CAM of the logit
  equal ReLU(cam − b)/(h·w) up to scale: the map is a closed-form output of the graph, no autograd at
  inference (../shared/research/seeds.md, B).
* :class:`Segmenter`: a segmentation-models-pytorch network (``Unet`` by default) → logits (N, 1, H, W).
* :class:`SaliencyNet` (kind ``saliency``): an smp network with a classification head on the deepest
  encoder features (``aux_params``, average pooling + linear) → (map logits (N, 1, H, W), logit (N, 1)),
  plus the head's CAM on the deepest features (:meth:`SaliencyNet.forward_all`). The decoder learns a
  saliency map from target heatmaps (:mod:`training.saliency.train`).

No network fetches: weights start random (``pretrained=False`` / ``encoder_weights=None``); a user who
has weights passes them as a local file to :func:`load_init_weights`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

Kind = Literal["classifier", "segmenter", "saliency"]
KINDS: tuple[Kind, ...] = ("classifier", "segmenter", "saliency")
SALIENCY_HEAD_DROPOUT = 0.2


@dataclass(frozen=True)
class ArchSpec:
    """Everything needed to rebuild a network (no weights).

    kind: "classifier" (timm backbone + linear head + CAM), "segmenter" (smp network) or "saliency" (smp
        network with a classification head).
    backbone: a timm model name (classifier) or an smp encoder name (segmenter, saliency; ``tu-<timm name>``
        too).
    decoder: the smp architecture (segmenter, saliency): "Unet", "UnetPlusPlus", "FPN", ...
    in_chans: input channels (1: the runtime feeds single-channel radiographs).
    options: extra keyword arguments of the timm / smp constructor (e.g. ``encoder_depth``,
        ``decoder_channels``, ``drop_rate``), JSON-serialisable.
    """

    kind: Kind
    backbone: str
    decoder: str = "Unet"
    in_chans: int = 1
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ArchSpec:
        kind = values.get("kind")
        if kind not in KINDS:
            raise ValueError(f"arch kind must be one of {KINDS}, got {kind!r}")
        known = {"kind", "backbone", "decoder", "in_chans", "options"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown arch fields {unknown}; valid: {sorted(known)}")
        return cls(
            kind=kind,
            backbone=str(values["backbone"]),
            decoder=str(values.get("decoder", "Unet")),
            in_chans=int(values.get("in_chans", 1)),
            options=dict(values.get("options", {})),
        )


class CamClassifier(nn.Module):
    """timm backbone → features (N, C, h, w) → GAP → linear → logit (N, 1); see the module docstring."""

    def __init__(self, backbone: nn.Module, num_features: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(num_features, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map A (N, C, h, w): the layer CAM, HiResCAM and Grad-CAM explain."""
        out: torch.Tensor = self.backbone(x)
        return out

    def logit_from_features(self, a: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(a.mean(dim=(2, 3)))
        return out

    def cam_from_features(self, a: torch.Tensor) -> torch.Tensor:
        """``w·A + b`` per position (N, 1, h, w); its spatial mean is the logit."""
        cam = torch.einsum("nchw,kc->nkhw", a, self.head.weight)
        return cam + self.head.bias.view(1, -1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logit_from_features(self.features(x))

    def forward_with_cam(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logit (N, 1), cam (N, 1, h, w)) from one pass through the backbone."""
        a = self.features(x)
        return self.logit_from_features(a), self.cam_from_features(a)


class Segmenter(nn.Module):
    """An smp network with one output channel: logits (N, 1, H, W)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


class SaliencyNet(nn.Module):
    """An smp network with a classification head (average pooling + linear on the deepest features).

    ``forward(x)`` → (map logits (N, 1, H, W), logit (N, 1)); :meth:`forward_all` adds the head's CAM
    (N, 1, h, w) on the deepest encoder features, whose spatial mean is the logit (GAP + linear, as in
    :class:`CamClassifier`).
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        head = getattr(net, "classification_head", None)
        if head is None:
            raise ValueError(
                "a saliency network needs an smp model built with aux_params (a classification head)"
            )
        pools = [m for m in head.modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
        linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
        if len(pools) != 1 or len(linears) != 1:
            raise ValueError(
                "the saliency network's classification head must be average pooling + one linear"
            )
        self.net = net

    @property
    def head_linear(self) -> nn.Linear:
        """The classification head's linear layer (not registered twice: state dict keys stay net.*)."""
        return next(m for m in self.net.classification_head.modules() if isinstance(m, nn.Linear))

    @property
    def encoder(self) -> nn.Module:
        encoder: nn.Module = self.net.encoder
        return encoder

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(map logits (N, 1, H, W), logit (N, 1), cam (N, 1, h, w) with mean_hw(cam) == logit)."""
        self.net.check_input_shape(x)
        features = self.net.encoder(x)
        maps: torch.Tensor = self.net.segmentation_head(self.net.decoder(features))
        deepest = features[-1]
        logit: torch.Tensor = self.net.classification_head(deepest)
        cam = torch.einsum("nchw,kc->nkhw", deepest, self.head_linear.weight)
        cam = cam + self.head_linear.bias.view(1, -1, 1, 1)
        return maps, logit, cam

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps, logit = self.net(x)
        return maps, logit


def build_model(spec: ArchSpec) -> CamClassifier | Segmenter | SaliencyNet:
    """A randomly initialised network for ``spec``; ValueError naming the bad name and where to look."""
    if spec.kind == "classifier":
        import timm

        if not timm.is_model(spec.backbone):
            raise ValueError(
                f"unknown timm model {spec.backbone!r}; see timm.list_models(), "
                "e.g. resnext50_32x4d, resnet18"
            )
        backbone = timm.create_model(
            spec.backbone,
            pretrained=False,
            in_chans=spec.in_chans,
            num_classes=0,
            global_pool="",
            **spec.options,
        )
        return CamClassifier(backbone, int(backbone.num_features))
    import segmentation_models_pytorch as smp

    archs = {name.lower(): name for name in dir(smp) if isinstance(getattr(smp, name), type)}
    arch = archs.get(spec.decoder.lower())
    if arch is None or not issubclass(getattr(smp, arch), nn.Module):
        valid = ["Unet", "UnetPlusPlus", "FPN", "DeepLabV3Plus", "Linknet", "PSPNet", "MAnet", "PAN"]
        raise ValueError(f"unknown smp architecture {spec.decoder!r}; valid: {valid}")
    options = dict(spec.options)
    if spec.kind == "saliency":
        # average pooling + linear: the head's CAM is then exact (SaliencyNet.forward_all)
        dropout = float(options.pop("head_dropout", SALIENCY_HEAD_DROPOUT))
        options["aux_params"] = {"classes": 1, "pooling": "avg", "dropout": dropout}
    try:
        net = getattr(smp, arch)(
            encoder_name=spec.backbone,
            encoder_weights=None,
            in_channels=spec.in_chans,
            classes=1,
            **options,
        )
    except KeyError as exc:
        raise ValueError(
            f"unknown smp encoder {spec.backbone!r}; see smp.encoders.get_encoder_names() "
            f"(e.g. resnet34, resnet18) or a timm model as 'tu-<name>'"
        ) from exc
    return SaliencyNet(net) if spec.kind == "saliency" else Segmenter(net)


def load_init_weights(model: nn.Module, path: Path, *, strict: bool = False) -> list[str]:
    """Load local weights (``--init PATH``: a .safetensors file, or a plain state dict saved by torch) into
    ``model``; returns the names of the model's parameters that the file did not provide.

    Never unpickles arbitrary objects: .pt/.pth files are read with ``weights_only=True``. Keys may carry a
    ``backbone.`` / ``net.`` prefix or not (timm / smp checkpoints have none).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--init {path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
        if not isinstance(state, dict):
            raise ValueError(f"--init {path}: not a state dict (got {type(loaded).__name__})")
    own = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for candidate in (key, f"backbone.{key}", f"net.{key}", f"net.encoder.{key}"):
            if candidate in own and own[candidate].shape == value.shape:
                mapped[candidate] = value
                break
    if not mapped:
        raise ValueError(f"--init {path}: no tensor matches a parameter of the model by name and shape")
    result = model.load_state_dict(mapped, strict=strict)
    return list(result.missing_keys)


class ClassifierForExport(nn.Module):
    """(image) → (logit (N, 1), cam (N, 1, h, w)): the classifier graph the runtime runs."""

    def __init__(self, model: CamClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_with_cam(x)


class SegmenterForExport(nn.Module):
    """(image) → probability (N, 1, H, W) = sigmoid(logits): the segmenter graph the runtime runs."""

    def __init__(self, model: Segmenter) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(x))


MapActivation = Literal["sigmoid", "spatial_softmax"]
MAP_ACTIVATIONS: tuple[MapActivation, ...] = ("sigmoid", "spatial_softmax")


class SaliencyForExport(nn.Module):
    """(image) → (map (N, 1, H, W) in [0, 1], logit (N, 1)): the saliency graph the runtime runs
    (bundle role ``saliency``, outputs ``{"map": "map", "logit": "logit"}``).

    ``map_activation``: ``sigmoid`` for decoders trained with BCE or MSE (the map is a probability);
    ``spatial_softmax`` for decoders trained with KL (the logits are a log-density over pixels), exported
    as exp(l − max l), the density divided by its peak.
    """

    def __init__(self, model: nn.Module, map_activation: MapActivation = "sigmoid") -> None:
        """``model``: a :class:`SaliencyNet` or a :class:`training.fusion.DualEncoderNet` (both give
        (map logits, logit))."""
        super().__init__()
        if map_activation not in MAP_ACTIVATIONS:
            raise ValueError(f"map_activation must be one of {MAP_ACTIVATIONS}, got {map_activation!r}")
        self.model = model
        self.map_activation = map_activation

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps, logit = self.model(x)
        if self.map_activation == "sigmoid":
            return torch.sigmoid(maps), logit
        peak = maps.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
        return torch.exp(maps - peak), logit


def saliency_for_export(model: nn.Module, provenance: dict[str, Any]) -> SaliencyForExport:
    """The export wrapper of a saliency run, with the ``map_activation`` its run card records
    (:func:`training.saliency.train.map_activation`; ``sigmoid`` for runs trained before it was recorded).
    The one place that reads it: ``triage export``, ``triage export-saliency`` and ``triage evaluate``
    on runs all call this. ValueError for an unknown activation."""
    activation = provenance.get("map_activation", "sigmoid")
    if activation not in MAP_ACTIVATIONS:
        raise ValueError(
            f"the run card's map_activation is {activation!r}; valid: {', '.join(MAP_ACTIVATIONS)}"
        )
    return SaliencyForExport(model, activation).eval()
