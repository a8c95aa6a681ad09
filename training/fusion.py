"""Seed 004's dual-encoder model (seeds.md D): a classification encoder fused with a saliency U-Net.

Three stages, each trained with the other stages frozen: (1) a classifier run (``triage train
classifier``, a :class:`~training.models.CamClassifier`); (2) a saliency run (``triage train saliency``, a
:class:`~training.models.SaliencyNet` whose decoder learnt the reading heatmaps); (3) a new head on both
(``triage train saliency --dual-encoder CLASSIFIER_RUN``, :mod:`training.saliency.fusion_train`):

    A = classifier features (N, C, h, w)      D = the U-Net decoder's last features (N, d, H, W)
    logit = linear(GAP(ReLU(conv1x1([upsample(A) ; D]))))

The 1×1 convolution over the concatenation is computed as ``upsample(W_A·A) + W_D·D + b`` — the same
function (bilinear up-sampling and a 1×1 convolution commute: both are linear, one over space, one over
channels), with the same parameters (one ``Conv2d(C + d, hidden, 1)``, its weight sliced), without the
(N, C, H, W) tensor a 2,048-channel ResNeXt at 256 px would need.

:class:`DualEncoderNet` is what the run's checkpoint holds and what ``triage export-saliency`` exports:
``forward(x)`` → (the U-Net's map logits, the fused logit), the signature of
:class:`~training.models.SaliencyNet`, so :class:`~training.models.SaliencyForExport` wraps either. The
frozen stages run in eval mode (their BatchNorm statistics stay those of stages 1 and 2) and without
gradients, whatever mode the model is put in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from training.models import ArchSpec, CamClassifier, SaliencyNet, build_model

if TYPE_CHECKING:
    from training.run_format import RunCard


class FusionHead(nn.Module):
    """(A (N, C, h, w), D (N, d, H, W) or None) → logit (N, 1); see the module docstring. With
    ``d_channels`` 0 the head reads A alone (the like-for-like control: a second head on the classifier)."""

    def __init__(self, a_channels: int, d_channels: int, hidden: int = 32) -> None:
        super().__init__()
        if min(a_channels, hidden) < 1 or d_channels < 0:
            raise ValueError(f"bad fusion head sizes: A {a_channels}, D {d_channels}, hidden {hidden}")
        self.a_channels, self.d_channels = a_channels, d_channels
        self.mix = nn.Conv2d(a_channels + d_channels, hidden, 1)
        self.linear = nn.Linear(hidden, 1)

    def forward(self, a: torch.Tensor, d: torch.Tensor | None = None) -> torch.Tensor:
        w = self.mix.weight[:, :, 0, 0]  # (hidden, C + d)
        z = torch.einsum("nchw,kc->nkhw", a, w[:, : self.a_channels])
        if d is not None:
            if d.shape[1] != self.d_channels:
                raise ValueError(f"the head expects {self.d_channels} decoder channels, got {d.shape[1]}")
            z = F.interpolate(z, size=d.shape[-2:], mode="bilinear", align_corners=False)
            z = z + torch.einsum("nchw,kc->nkhw", d, w[:, self.a_channels :])
        elif self.d_channels:
            raise ValueError("this head fuses decoder features; none given")
        z = torch.relu(z + self.mix.bias.view(1, -1, 1, 1)).mean(dim=(2, 3))
        out: torch.Tensor = self.linear(z)
        return out


def decoder_channels(model: SaliencyNet) -> int:
    """The channels of the U-Net decoder's last features (what its segmentation head reads)."""
    conv = next(m for m in model.net.segmentation_head.modules() if isinstance(m, nn.Conv2d))
    return int(conv.in_channels)


class DualEncoderNet(nn.Module):
    """Frozen classifier + frozen saliency U-Net + trainable :class:`FusionHead`:
    ``forward(x)`` → (map logits (N, 1, H, W), fused logit (N, 1))."""

    def __init__(self, classifier: CamClassifier, saliency: SaliencyNet, hidden: int = 32) -> None:
        super().__init__()
        self.classifier, self.saliency = classifier, saliency
        self.head = FusionHead(classifier.head.in_features, decoder_channels(saliency), hidden)
        for p in self.frozen().parameters():
            # a gradient left from the stage that trained it (zeros, not None) would let an optimizer
            # step the weight (fastai's decoupled weight decay steps every parameter that has a .grad)
            p.requires_grad_(False)
            p.grad = None
        self.frozen().eval()

    def frozen(self) -> nn.ModuleList:
        """Stages 1 and 2 (never trained here)."""
        return nn.ModuleList([self.classifier, self.saliency])

    def train(self, mode: bool = True) -> DualEncoderNet:
        super().train(mode)
        self.frozen().eval()
        return self

    def forward_all(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(map logits, fused logit, the classifier's own logit, the U-Net's own head logit) — the last
        two, from the same pass, for comparisons."""
        with torch.no_grad():
            a = self.classifier.features(x)
            net = self.saliency.net
            net.check_input_shape(x)
            features = net.encoder(x)
            decoded = net.decoder(features)
            maps = net.segmentation_head(decoded)
            own = self.classifier.logit_from_features(a)
            unet_own = net.classification_head(features[-1])
        return maps, self.head(a, decoded), own, unet_own

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps, logit, _, _ = self.forward_all(x)
        return maps, logit


def build_dual(card: RunCard) -> DualEncoderNet:
    """The fused network (random weights) a dual-encoder run's card describes
    (``provenance.dual_encoder``: the classifier's architecture and the head's size)."""
    dual = card.provenance["dual_encoder"]
    classifier = build_model(ArchSpec.from_dict(dual["classifier_arch"]))
    saliency = build_model(card.arch)
    if not isinstance(classifier, CamClassifier) or not isinstance(saliency, SaliencyNet):
        raise ValueError("the dual-encoder record names a classifier and a saliency network of other kinds")
    return DualEncoderNet(classifier, saliency, int(dual["hidden"]))
