"""A toy data set with a planted confounder, for the test that the heatmap loss moves attribution.

Images (N, 1, size, size) of Gaussian noise. The *relevant region* is the central square (half the side);
a positive image has a faint disc (the "lesion") somewhere inside it. The *confounder* is a bright square
in the top-left corner, entirely outside the relevant region, present in ``p_pos`` of the positives and
``p_neg`` of the negatives — in training 0.9 / 0.1 ("marker ⇒ disease"), in the decorrelated test set 0.5 /
0.5. Regions: ``region`` (the relevant square, what the heatmap loss keeps attribution inside) and
``confounder`` (the marker's square, all-NaN where an image has no marker). Everything is seeded.
"""

from __future__ import annotations

import torch

from training.saliency.protocol import Tensors


def toy_confounder_set(
    n: int,
    *,
    size: int = 32,
    p_pos: float = 0.9,
    p_neg: float = 0.1,
    lesion_contrast: float = 0.4,
    marker_contrast: float = 2.0,
    noise: float = 0.5,
    seed: int = 0,
) -> Tensors:
    if size < 16 or size % 4:
        raise ValueError(f"size must be a multiple of 4 and at least 16, got {size}")
    g = torch.Generator().manual_seed(seed)
    label = (torch.arange(n) % 2).float()[torch.randperm(n, generator=g)]
    image = noise * torch.randn(n, 1, size, size, generator=g)
    q = size // 4
    region = torch.zeros(n, 1, size, size)
    region[:, :, q : 3 * q, q : 3 * q] = 1.0
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    radius = max(2.0, size / 12)
    for i in torch.nonzero(label > 0).flatten().tolist():
        cy, cx = (q + radius + torch.rand(2, generator=g) * (2 * q - 2 * radius)).tolist()
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2) <= radius**2
        image[i, 0][disc] += lesion_contrast
    p = torch.where(label > 0, torch.tensor(p_pos), torch.tensor(p_neg))
    has_marker = torch.rand(n, generator=g) < p
    side = q - 1  # the whole corner square up to the relevant region
    marker = torch.full((n, 1, size, size), float("nan"))
    for i in torch.nonzero(has_marker).flatten().tolist():
        image[i, 0, 1 : 1 + side, 1 : 1 + side] += marker_contrast
        marker[i] = 0.0
        marker[i, 0, 1 : 1 + side, 1 : 1 + side] = 1.0
    return Tensors(image, label, {"region": region, "confounder": marker})
