"""The models on a batch of prepared images: gate, then segmenter and saliency model on the images the
gate passes; a failing batch is retried image by image so that one bad image fails only itself."""

from __future__ import annotations

import logging
import time

import numpy as np

from triage.cascade.items import Item
from triage.cascade.models import CascadeModels, normalised_cam
from triage.cascade.options import PredictOptions
from triage.errors import ErrorCode, TriageError

logger = logging.getLogger(__name__)


def infer_batch(models: CascadeModels, batch: list[Item], options: PredictOptions) -> None:
    """Gate, segment and saliency for a batch of items read without error, filling them in place."""
    t0 = time.perf_counter()
    x = np.stack([it.gate_input.x for it in batch])  # type: ignore[union-attr]
    prob, cam = models.gate(x, options.tta)
    t1 = time.perf_counter()
    gate = models.bundle.thresholds.gate
    cams = normalised_cam(cam) if (cam is not None and options.saliency) else None
    for i, it in enumerate(batch):
        it.probability = float(prob[i])
        it.gated = bool(prob[i] >= gate)
        it.cam = cams[i] if cams is not None else None
        it.timings_ms["gate"] = 1000 * (t1 - t0) / len(batch)
    gated = [it for it in batch if it.gated]
    if gated:
        xs = np.stack([it.seg_input.x for it in gated])  # type: ignore[union-attr]
        seg = models.segment(xs, options.tta)
        t2 = time.perf_counter()
        for i, it in enumerate(gated):
            it.seg_prob = seg[i]
            it.timings_ms["segment"] = 1000 * (t2 - t1) / len(gated)
        if options.saliency and models.saliency is not None:
            maps, probs = models.saliency_outputs(np.stack([it.sal_input.x for it in gated]))  # type: ignore[union-attr]
            t3 = time.perf_counter()
            for i, it in enumerate(gated):
                it.saliency = maps[i]
                it.saliency_probability = float(probs[i]) if probs is not None else None
                it.timings_ms["saliency"] = 1000 * (t3 - t2) / len(gated)


def infer_isolated(models: CascadeModels, batch: list[Item], options: PredictOptions) -> None:
    """:func:`infer_batch`; if it fails, each item alone, so one bad image fails only itself
    (``Item.error`` = inference_failed)."""
    try:
        infer_batch(models, batch, options)
        return
    except Exception as exc:
        logger.warning("batch of %d failed (%s); retrying images one by one", len(batch), type(exc).__name__)
    for it in batch:
        try:
            infer_batch(models, [it], options)
        except Exception as exc:
            it.error = TriageError(ErrorCode.INFERENCE_FAILED, f"{type(exc).__name__}: {exc}")
