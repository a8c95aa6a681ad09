"""Differentiable attribution maps for classifiers: HiResCAM and Grad-CAM on a chosen layer.

Both explain a target score y_c (the pre-sigmoid logit of the explained class) through a feature map
A (N, C, h, w) of one layer, with g = ∂y_c/∂A (../shared/research/seeds.md, B)::

    HiResCAM   H = Σ_channels A ⊙ g                      (element-wise, then summed over channels)
    Grad-CAM   H = Σ_channels A · mean_hw(g)             (one weight per channel)

:func:`attribute` returns the signed map H (N, 1, h, w); :func:`normalise_map` applies ReLU and divides
each map by its maximum, which is what losses, metrics and overlays use. With ``create_graph=True`` the
gradient g is itself differentiable, so a loss on H trains the network (double backprop).

Which layer: by default the network's last feature map (``CamClassifier.features``, or timm's
``forward_features`` / ``forward_head`` split); any other module by its name in
``model.named_modules()``, captured with a forward hook. A name that does not exist is a one-line
ValueError listing the valid names.

Which class: a binary classifier has one logit z. Explaining the positive class uses y = z, the negative
class y = −z (its log-odds). ``"predicted"`` explains the class the model predicts (z ≥ 0 → positive),
``"true"`` the labelled class. For K > 1 logits the chosen class's logit is used.

Closed form (tested): for GAP + linear heads, g = w/(h·w) at every position, so with b the head's bias
HiResCAM = Grad-CAM = (CAM − b)/(h·w), where CAM = w·A + b is :meth:`CamClassifier.cam_from_features`.
The bias is a constant added at every position; it carries no spatial information and is *not* part of
either attribution map.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from training.models import CamClassifier
from training.saliency.options import CLASS_CHOICES, METHODS, ClassChoice, Method

MAX_LISTED_LAYERS = 60
EPS = 1e-8


@dataclass
class Attribution:
    """logits (N, K) of the forward pass, the explained scores (N,) and the signed maps (N, 1, h, w)."""

    logits: torch.Tensor
    scores: torch.Tensor
    maps: torch.Tensor


def layer_names(model: nn.Module) -> list[str]:
    """Every module name usable as ``layer`` (``model.named_modules()`` without the root)."""
    return [name for name, _ in model.named_modules() if name]


def _layer_error(model: nn.Module, name: str) -> ValueError:
    names = layer_names(model)
    if len(names) <= MAX_LISTED_LAYERS:
        listed = ", ".join(names)
    else:
        shallow = [n for n in names if n.count(".") <= 1]
        nested = len(names) - len(shallow)
        listed = ", ".join(shallow) + f" (and {nested} nested names: model.named_modules())"
    return ValueError(f"unknown layer {name!r}; valid layers: {listed}")


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name``; ValueError listing the valid names otherwise."""
    modules = dict(model.named_modules())
    if not name or name not in modules:
        raise _layer_error(model, name)
    return modules[name]


def _forward_default(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(features A, logits) through the network's last feature map."""
    if isinstance(model, CamClassifier):
        a = model.features(x)
        return a, model.logit_from_features(a)
    forward_features = getattr(model, "forward_features", None)
    forward_head = getattr(model, "forward_head", None)
    if callable(forward_features) and callable(forward_head):
        a = forward_features(x)
        return a, forward_head(a)
    raise ValueError(
        f"{type(model).__name__} has no default feature layer (neither a CamClassifier nor a timm model "
        "with forward_features/forward_head); pass layer=<name>"
    )


def _forward_hooked(model: nn.Module, x: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(output of the module ``name``, logits). The hook hands a clone downstream so that in-place
    operations after the layer (``x += shortcut``, ``ReLU(inplace=True)``) cannot change the captured A."""
    module = resolve_layer(model, name)
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, _inputs: object, output: object) -> object:
        if not isinstance(output, torch.Tensor):
            raise ValueError(f"layer {name!r} outputs {type(output).__name__}, not a tensor")
        captured.append(output)
        return output.clone()

    handle = module.register_forward_hook(hook)
    try:
        logits = model(x)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise ValueError(
            f"layer {name!r} ran {len(captured)} times in one forward pass; choose one that runs once"
        )
    return captured[0], logits


def explained_scores(
    logits: torch.Tensor, which: ClassChoice = "predicted", labels: torch.Tensor | None = None
) -> torch.Tensor:
    """y_c (N,) for each image: see the module docstring. ``labels``: (N,) or (N, 1), needed for "true"."""
    if which not in CLASS_CHOICES:
        raise ValueError(f"class choice must be one of {CLASS_CHOICES}, got {which!r}")
    z = logits.reshape(len(logits), -1)
    if which == "true" and labels is None:
        raise ValueError("explaining the true class needs labels")
    if z.shape[1] == 1:
        if which == "predicted":
            sign = torch.where(z[:, 0].detach() >= 0, 1.0, -1.0)
        else:
            assert labels is not None
            sign = 2.0 * labels.reshape(-1).to(z.dtype) - 1.0
        return sign * z[:, 0]
    if which == "predicted":
        index = z.detach().argmax(dim=1)
    else:
        assert labels is not None
        index = labels.reshape(-1).long()
    return z.gather(1, index[:, None])[:, 0]


def attribute(
    model: nn.Module,
    x: torch.Tensor,
    method: Method = "hirescam",
    *,
    layer: str | None = None,
    which: ClassChoice = "predicted",
    labels: torch.Tensor | None = None,
    create_graph: bool = True,
) -> Attribution:
    """Forward ``x`` (N, C, H, W) and return the logits and the signed attribution maps (N, 1, h, w).

    ``create_graph=True`` keeps the maps differentiable with respect to the parameters (for losses);
    ``False`` is enough for auditing (the maps are then detached). Raises ValueError for an unknown
    method, class choice or layer.
    """
    if method not in METHODS:
        raise ValueError(f"attribution method must be one of {METHODS}, got {method!r}")
    with torch.enable_grad():
        a, logits = _forward_default(model, x) if layer is None else _forward_hooked(model, x, layer)
        if a.ndim != 4:
            where = f"layer {layer!r}" if layer else "the default feature layer"
            raise ValueError(f"{where} outputs shape {tuple(a.shape)}; attribution needs (N, C, h, w)")
        if not a.requires_grad:
            raise ValueError("the feature map does not require grad: are the parameters frozen?")
        return attribute_from_features(
            a, logits, method, which=which, labels=labels, create_graph=create_graph
        )


def attribute_from_features(
    a: torch.Tensor,
    logits: torch.Tensor,
    method: Method = "hirescam",
    *,
    which: ClassChoice = "predicted",
    labels: torch.Tensor | None = None,
    create_graph: bool = True,
) -> Attribution:
    """The maps for features ``a`` (N, C, h, w) that ``logits`` were computed from (same graph)."""
    scores = explained_scores(logits, which, labels)
    (g,) = torch.autograd.grad(scores.sum(), a, create_graph=create_graph, retain_graph=True)
    if method == "hirescam":
        maps = (a * g).sum(dim=1, keepdim=True)
    else:
        maps = (a * g.mean(dim=(2, 3), keepdim=True)).sum(dim=1, keepdim=True)
    if not create_graph:
        maps, logits, scores = maps.detach(), logits.detach(), scores.detach()
    return Attribution(logits=logits, scores=scores, maps=maps)


def normalise_map(maps: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """ReLU, then each map divided by its maximum: (N, 1, h, w) in [0, 1]; all-zero maps stay 0."""
    pos = torch.relu(maps)
    peak = pos.flatten(1).amax(dim=1).view(-1, *([1] * (maps.ndim - 1)))
    return pos / (peak + eps)


def closed_form_map(model: CamClassifier, x: torch.Tensor) -> torch.Tensor:
    """(CAM − b)/(h·w) (N, 1, h, w): HiResCAM = Grad-CAM of the logit for a GAP + linear head."""
    a = model.features(x)
    cam = model.cam_from_features(a) - model.head.bias.view(1, -1, 1, 1)
    return cam / (a.shape[2] * a.shape[3])
