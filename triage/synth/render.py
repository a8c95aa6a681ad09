"""Rendering a sampled case into a radiograph, its masks and its reading heatmap.

The image is an attenuation sum turned into display values: T = Σ layers, D = (1 − exp(−k·T))^γ,
then noise. Smooth layers are computed at a quarter of the working resolution, sharp ones (bones,
vessels, devices) at half the output size, and only the pleural line and the noise at full size —
which is what makes a 1024² image take tens of milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.ndimage import gaussian_filter

from triage.synth.canvas import Canvas, FloatImage, polygon_mask, resize
from triage.synth.case import Case
from triage.synth.devices import marker_strokes

BoolImage = NDArray[np.bool_]


@dataclass(frozen=True)
class Rendered:
    """One synthetic radiograph and its ground truth, all n×n.

    image: float32 in [0, 1], 1 = most attenuating (bright on a standard display).
    pneumothorax: bool, the ground-truth mask. lungs: bool, the lung fields (pneumothorax included).
    drain: bool, pixels covered by a chest drain. heatmap: float32 in [0, 1], where a reader looks
    (kept at low resolution as `heatmap_low`; `heatmap` upsamples it). corner_marker: bool, the positive
    control's corner marker (all False without one).
    """

    image: FloatImage
    pneumothorax: BoolImage
    lungs: BoolImage
    drain: BoolImage
    heatmap_low: FloatImage
    corner_marker: BoolImage | None = None

    @property
    def heatmap(self) -> FloatImage:
        """The reading heatmap at full size (computed at low resolution; it is smooth)."""
        return np.clip(resize(self.heatmap_low, self.image.shape[0]), 0.0, 1.0)


def _grid(n: int) -> tuple[FloatImage, FloatImage]:
    c = ((np.arange(n) + 0.5) / n).astype(np.float32)
    return c[None, :], c[:, None]


def _gauss(x: FloatImage, y: FloatImage, centre: tuple[float, float], sigma: float) -> FloatImage:
    return np.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2) / (2 * sigma**2)).astype(np.float32)


def _smooth_layers(case: Case, n_low: int, rng: np.random.Generator) -> tuple[FloatImage, FloatImage]:
    """Soft-tissue thickness (additive) and lung air depth, at low resolution."""
    a, cfg = case.anatomy, case.config
    x, y = _grid(n_low)
    body = gaussian_filter(polygon_mask(a.body, n_low).astype(np.float32), 0.02 * n_low)
    soft = body * (0.78 + 0.32 * (1.0 - ((x - 0.5) / 0.5) ** 2))
    lungs = polygon_mask(list(a.lungs.values()), n_low).astype(np.float32)
    depth = gaussian_filter(lungs, 0.035 * n_low)
    depth = 0.2 + 0.8 * (depth / max(float(depth.max()), 1e-6)) ** 1.5
    for hilum in a.hila.values():
        soft = soft + 0.13 * _gauss(x, y, hilum, 0.028)
    for breast in a.breasts:
        soft = soft + 0.09 * gaussian_filter(polygon_mask(breast, n_low).astype(np.float32), 0.015 * n_low)
    open_lung = lungs
    if case.pneumothorax is not None:
        ptx = polygon_mask(case.pneumothorax.region, n_low).astype(np.float32)
        open_lung = lungs * (1.0 - ptx)
        around = gaussian_filter(ptx, 0.05 * n_low) * (1.0 - ptx) * lungs
        soft = soft + cfg.collapse_density * min(1.0, 2.5 * case.pneumothorax.depth) * around / max(
            float(around.max()), 1e-6
        )
    texture = gaussian_filter(rng.standard_normal((n_low, n_low)).astype(np.float32), 0.8)
    soft = soft + 0.05 * cfg.marking_density * texture * open_lung
    return soft.astype(np.float32), depth.astype(np.float32)


def _sharp_layers(case: Case, n: int) -> FloatImage:
    """Bones, mediastinum, vessels and devices at working resolution; returns their attenuation sum."""
    a, cfg = case.anatomy, case.config
    lungs = polygon_mask(list(a.lungs.values()), n).astype(np.float32)
    ptx = np.zeros((n, n), np.float32)
    if case.pneumothorax is not None:
        ptx = polygon_mask(case.pneumothorax.region, n).astype(np.float32)

    post, ant, bones, spine, soft, airway, devices = (Canvas(n) for _ in range(7))
    vessels = Canvas(n // 2)  # drawn at half resolution: upsampling softens them like real markings
    for rib in a.posterior_ribs:
        post.polyline(rib.path, rib.width, 1.0)
        post.polyline(rib.path, rib.width * 0.55, 0.72)  # cortical rims brighter than the medulla
    for rib in a.anterior_ribs:
        ant.polyline(rib.path, rib.width, 1.0)
    for scap in a.scapulae:
        bones.polygon(scap, 0.45)
    for head in a.humeral_heads:
        bones.polygon(head, 1.0)
    for clav in a.clavicles:
        bones.polyline(clav.path, clav.width, 1.0)
        bones.polyline(clav.path, clav.width * 0.5, 0.7)
    spine.polyline(a.spine, a.spine_width, 1.0)
    for v in a.vertebra_y:
        left = a.pose.apply(np.array([[0.5 - 0.04, v], [0.5 + 0.04, v]]))
        spine.polyline(left, 0.006, 0.55)
        for dx in (-0.025, 0.025):
            c = a.pose.apply(np.array([[0.5 + dx, v + 0.02]]))[0]
            spine.disc((float(c[0]), float(c[1])), 0.007, 1.35)
    soft.polygon(a.mediastinum, 1.0)
    soft.polygon(a.heart, 1.0)
    soft.polygon(a.aortic_knob, 1.0)
    if a.gastric_bubble is not None:
        airway.polygon(a.gastric_bubble, 1.4)
    airway.polyline(a.trachea[0], 0.022, 1.0)
    for bronchus in a.trachea[1:]:
        airway.polyline(bronchus, 0.014, 0.8)
    for vessel in case.vessels:
        vessels.polyline(vessel.path, vessel.width, vessel.density)
    if case.drain is not None:
        d = case.drain
        devices.polyline(d.path, d.width, 0.22)
        normal = np.gradient(d.path, axis=0)[:, ::-1] * np.array([1.0, -1.0])
        normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-12
        stripe = d.path + normal * d.width * 0.25
        t = np.linspace(0, 1, len(d.path))
        keep = np.ones(len(d.path), bool)
        for h in d.side_holes:
            keep &= np.abs(t - h) > 0.012
        runs = np.split(np.arange(len(t)), np.flatnonzero(np.diff(keep.astype(int))) + 1)
        for run in runs:
            if keep[run[0]] and len(run) > 1:
                devices.polyline(stripe[run], 0.003, 1.2)
    for lead in case.ecg:
        devices.polyline(lead.wire, 0.0015, 0.45)
        devices.ring(lead.centre, lead.radius, 0.003, 0.6)
        devices.disc(lead.centre, lead.radius * 0.35, 1.0)
    if case.marker is not None:
        for stroke in marker_strokes(case.marker):
            devices.polyline(stroke, 0.005, 1.6)
    if case.corner_marker is not None:
        devices.polygon(case.corner_marker.polygon(), 1.6)

    open_lung = lungs * (1.0 - ptx)
    total = (
        0.15 * post.array()
        + 0.055 * ant.array()
        + 0.26 * bones.array()
        + 0.10 * spine.array()
        + 0.12 * soft.array()
        - 0.14 * airway.array()
        + 0.17 * cfg.marking_density * resize(vessels.array(), n) * open_lung
        - cfg.ptx_lucency * ptx
        + devices.array()
    )
    result: FloatImage = total.astype(np.float32)
    return result


def _heatmap(case: Case, n_low: int) -> FloatImage:
    """Where a reader looks: the lesion, both hila, both apices and the costophrenic angles."""
    a = case.anatomy
    x, y = _grid(n_low)
    h = np.zeros((n_low, n_low), np.float32)
    for side in a.lungs:
        h = np.maximum(h, 0.45 * _gauss(x, y, a.hila[side], 0.04))
        h = np.maximum(h, 0.35 * _gauss(x, y, a.apices[side], 0.04))
        h = np.maximum(h, 0.30 * _gauss(x, y, a.costophrenic[side], 0.035))
    if case.pneumothorax is not None:
        sigma = max(0.03, float(np.sqrt(case.pneumothorax.area_fraction)) * 0.6)
        h = np.maximum(h, _gauss(x, y, case.pneumothorax.centroid, sigma))
    return h


def render(case: Case, size: int) -> Rendered:
    """Render `case` as a size×size radiograph with its masks. Deterministic for the case's seed."""
    rng = np.random.default_rng(case.render_seed)
    n_work = size // 2 if size >= 512 else size
    n_low = max(64, n_work // 4)
    add_low, depth_low = _smooth_layers(case, n_low, rng)
    sharp = _sharp_layers(case, n_work)
    lungs_soft = resize(
        polygon_mask(list(case.anatomy.lungs.values()), n_work // 2).astype(np.float32), n_work
    )
    t = resize(add_low, n_work) + sharp - 0.78 * lungs_soft * resize(depth_low, n_work)
    t = gaussian_filter(t, max(0.6, case.blur_px * n_work / 1024))
    # Display transfer at working resolution (smooth there), then up to full size for the fine detail.
    shown = (1.0 - np.exp(-case.exposure * np.clip(t, 0.0, None))) ** case.gamma
    image = resize(shown.astype(np.float32), size)

    ptx_mask = np.zeros((size, size), bool)
    if case.pneumothorax is not None:
        ptx_mask = polygon_mask(case.pneumothorax.region, size)
        _add_line(image, case.pneumothorax.pleural_line, case.config.pleural_line_contrast)
    lungs = polygon_mask(list(case.anatomy.lungs.values()), size)
    drain = np.zeros((size, size), bool)
    if case.drain is not None:
        dc = Canvas(size, "L")
        dc.polyline(case.drain.path, case.drain.width, 1)
        drain = dc.mask()

    sigma = np.float32(case.config.noise * np.sqrt(1024 / size))
    image += _noise(size, rng) * (sigma * (np.float32(0.6) + np.float32(0.5) * image))
    np.clip(image, 0.0, 1.0, out=image)
    corner = np.zeros((size, size), bool)
    if case.corner_marker is not None:
        corner = polygon_mask(case.corner_marker.polygon(), size)
    return Rendered(image, ptx_mask, lungs, drain, _heatmap(case, n_low), corner)


_NOISE_BANK: dict[int, FloatImage] = {}


def _noise(size: int, rng: np.random.Generator) -> FloatImage:
    """A size×size window of white Gaussian noise from a fixed bank twice the size, at a random offset.

    Drawing 10⁶ normals per image costs more than the rest of the full-size work; windows of one fixed
    field are as good as fresh noise for a phantom, and stay deterministic for the case's seed.
    """
    bank = _NOISE_BANK.get(size)
    if bank is None:
        bank = np.random.default_rng(20261122).standard_normal((2 * size, 2 * size), dtype=np.float32)
        _NOISE_BANK[size] = bank
    oy, ox = (int(v) for v in rng.integers(0, size, 2))
    window = bank[oy : oy + size, ox : ox + size]
    return window[::-1] if rng.random() < 0.5 else window


def _add_line(image: FloatImage, line: NDArray[np.float64], contrast: float) -> None:
    """Add a thin bright line (the visceral pleura, ~1.5 px at 1024 px) in place, blurred on its box."""
    size = image.shape[0]
    pad = 4
    lo = np.clip(np.floor(line.min(axis=0) * size).astype(int) - pad, 0, size)
    hi = np.clip(np.ceil(line.max(axis=0) * size).astype(int) + pad, 0, size)
    if np.any(hi <= lo):
        return
    # Draw on a canvas covering only the bounding box: shift the line into the box's frame.
    box = int(max(hi - lo))
    canvas = Canvas(box)
    canvas.polyline((line * size - lo) / box, 0.0016 * size / box, contrast)
    crop = canvas.array()[: hi[1] - lo[1], : hi[0] - lo[0]]
    image[lo[1] : hi[1], lo[0] : hi[0]] += gaussian_filter(crop, 0.5 * size / 1024 + 0.3)
