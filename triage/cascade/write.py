"""Per-image outputs (runs in writer threads): the decision (``triage/cascade/postprocess.py: decide``)
written as the files the options ask for (``triage/outputs/formats.py``) and the image's record."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from triage.bundle import Bundle
from triage.cascade.items import Item
from triage.cascade.postprocess import Decision, decide
from triage.cascade.preprocess import content
from triage.errors import ErrorCode, TriageError, safe_text
from triage.io.dicomfile import patient_identifiers
from triage.outputs.atomic import atomic_save_png
from triage.outputs.dicom_objects import BundleInfo, sanitised_source
from triage.outputs.formats import DICOM_FORMATS, PICTURE_FORMATS
from triage.outputs.overlay import render_overlay, save_mask_png
from triage.outputs.paths import study_dir, validated_uid
from triage.outputs.records import ResultRecord, input_digest, redact
from triage.outputs.saliency import render_saliency_panel, write_saliency_sc
from triage.outputs.sc import write_sc
from triage.outputs.seg import write_seg
from triage.outputs.sr import write_sr


def _private(item: Item) -> tuple[str, ...]:
    """The patient identifiers of ``item``'s header, if it was parsed (to redact from its record)."""
    if item.image is not None:
        return patient_identifiers(item.image.dataset)
    return item.error.identifiers if item.error is not None else ()


def error_record(item: Item, bundle_label: str) -> ResultRecord:
    err = item.error or TriageError(ErrorCode.INTERNAL, "unknown error")
    image = item.image
    private = _private(item)
    return ResultRecord(
        input=redact(item.input, private),
        input_sha256=input_digest(item.input),
        status="error",
        error_code=err.code.value,
        message=redact(err.message, private),
        study_uid=image.study_uid if image else None,
        series_uid=image.series_uid if image else None,
        sop_uid=image.sop_uid if image else None,
        bundle=bundle_label,
        timings_ms=_rounded(item.timings_ms),
    )


def _message(failures: dict[str, str], emptied: list[str]) -> str | None:
    """What failed, and which source attributes the DICOM outputs left empty (named, never quoted)."""
    parts = [f"{kind}: {text}" for kind, text in failures.items()]
    if emptied:
        parts.append(f"invalid in the source, left empty in the DICOM outputs: {', '.join(emptied)}")
    return "; ".join(parts) or None


def _rounded(timings: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 2) for k, v in timings.items()}


def _cam_on_source(item: Item) -> NDArray[np.float32] | None:
    """The classifier's CAM cropped to the image (letterbox padding removed) at its own resolution, or
    None; the renderers resize a map once, to their own output size, rather than to the full source grid
    first (a 2048² float map per image)."""
    if item.cam is None:
        return None
    if item.gate_input is None:
        raise ValueError("a CAM without the classifier's input geometry")
    return np.clip(content(item.cam, item.gate_input.geometry), 0.0, 1.0)


def _model_saliency_on_source(item: Item) -> NDArray[np.float32] | None:
    """The saliency model's map cropped to the image through its own input's geometry, or None."""
    if item.saliency is None:
        return None
    prepared = item.sal_input or item.gate_input
    if prepared is None:
        raise ValueError("a saliency map without its model's input geometry")
    return np.clip(content(item.saliency, prepared.geometry), 0.0, 1.0)


def _saliency_on_source(item: Item) -> NDArray[np.float32] | None:
    """The map shown in the overlay: the saliency model's if present, else the classifier's CAM."""
    chosen = _model_saliency_on_source(item)
    return chosen if chosen is not None else _cam_on_source(item)


def _decision(item: Item, bundle: Bundle) -> Decision:
    """The decision for an inferred image (see :func:`triage.cascade.postprocess.decide`)."""
    if item.image is None:
        raise ValueError("this input has no image to decide on")
    return decide(
        float(item.probability or 0.0),
        item.gated,
        item.seg_prob,
        item.seg_input.geometry if item.seg_input is not None else None,
        item.source_shape,
        item.image.pixel_spacing_mm,
        bundle.thresholds,
    )


def finish_item(item: Item, bundle: Bundle, out: Path, formats: frozenset[str]) -> ResultRecord:
    """Write the outputs of one inferred image and return its record.

    Each requested output is written on its own: when one fails (e.g. a SEG for a source whose IOD
    highdicom cannot reference), the others are still written and the record keeps the decision
    (probability, positive, mask area, priority) with status ``error``, code ``write_failed`` and a
    message naming each failed output, so the worklist still ranks the study and nothing passes silently.
    """
    if item.error is not None or item.image is None:
        return error_record(item, bundle.label)
    t0 = time.perf_counter()
    image = item.image
    try:
        decision = _decision(item, bundle)
        folder = study_dir(out, image.study_uid)
        sop = validated_uid(image.sop_uid, "SOPInstanceUID")
    except TriageError as exc:
        item.error = exc
        return error_record(item, bundle.label)
    except Exception as exc:  # one image's failure never ends the batch
        item.error = TriageError(ErrorCode.INTERNAL, f"{type(exc).__name__}: {safe_text(exc)}")
        return error_record(item, bundle.label)
    info = BundleInfo(bundle.name, bundle.version, bundle.content_hash.removeprefix("sha256:"))
    # invalid source attributes (a birth date that is no date, ...) are left empty in the DICOM outputs
    source, emptied = sanitised_source(image.dataset) if formats & DICOM_FORMATS else (image.dataset, [])
    outputs: dict[str, str] = {}
    failures: dict[str, str] = {}

    def attempt(kind: str, path: Path, write: Callable[[Path], object]) -> None:
        try:
            write(path)
            outputs[kind] = path.relative_to(out).as_posix()
        except TriageError as exc:
            failures[kind] = exc.message
        except Exception as exc:
            failures[kind] = f"{type(exc).__name__}: {safe_text(exc)}"

    mask, area, area_mm2 = decision.mask, decision.area_px, decision.area_mm2
    positive, probability = decision.positive, decision.probability
    overlay = None
    area_text = f"{area_mm2:.0f} mm²" if area_mm2 is not None else f"{area} px"
    caption = (
        f"P(PTX)={probability:.2f} · {'POSITIVE' if positive else 'negative'}"
        f"{' · area ' + area_text if positive else ''} · {bundle.label}"
    )
    if formats & PICTURE_FORMATS:
        try:
            overlay = render_overlay(
                item.picture,
                mask if positive else None,
                _saliency_on_source(item),
                caption=caption,
                shape=item.source_shape,
            )
        except Exception as exc:
            failures["overlay"] = f"{type(exc).__name__}: {safe_text(exc)}"
    if "png" in formats and overlay is not None:
        attempt("overlay_png", folder / f"{sop}_overlay.png", lambda p: atomic_save_png(p, overlay))
        if positive:
            attempt("mask_png", folder / f"{sop}_mask.png", lambda p: save_mask_png(p, mask))
    model_map = _model_saliency_on_source(item)
    if model_map is not None and "png" in formats:  # the saliency model's map beside the CAM
        attempt(
            "saliency_png",
            folder / f"{sop}_saliency.png",
            lambda p: atomic_save_png(
                p,
                render_saliency_panel(
                    item.picture,
                    mask if positive else None,
                    _cam_on_source(item),
                    model_map,
                    caption=caption,
                    shape=item.source_shape,
                ),
            ),
        )
    if model_map is not None and "saliency" in formats:
        attempt(
            "saliency_sc",
            folder / f"{sop}_saliency_sc.dcm",
            lambda p: write_saliency_sc(source, model_map, p, bundle=info),
        )
    if "seg" in formats and positive:
        attempt("seg", folder / f"{sop}_seg.dcm", lambda p: write_seg(source, mask, p, bundle=info))
    if "sc" in formats and overlay is not None:
        attempt("sc", folder / f"{sop}_sc.dcm", lambda p: write_sc(source, overlay, p, bundle=info))
    if "sr" in formats:
        attempt(
            "sr",
            folder / f"{sop}_sr.dcm",
            lambda p: write_sr(
                source,
                probability=probability,
                positive=positive,
                mask_area_mm2=area_mm2,
                path=p,
                bundle=info,
            ),
        )
    item.timings_ms["write"] = 1000 * (time.perf_counter() - t0)
    private = _private(item)
    message = _message(failures, emptied)
    return ResultRecord(
        input=redact(item.input, private),
        input_sha256=input_digest(item.input),
        status="error" if failures else "ok",
        error_code=ErrorCode.WRITE_FAILED.value if failures else None,
        message=redact(message, private) if message else None,
        study_uid=image.study_uid,
        series_uid=image.series_uid,
        sop_uid=image.sop_uid,
        probability=round(probability, 6),
        positive=positive,
        gated=decision.gated,
        mask_area_px=area,
        mask_area_mm2=area_mm2,
        priority=round(decision.priority, 6),
        saliency_probability=(
            round(item.saliency_probability, 6) if item.saliency_probability is not None else None
        ),
        bundle=bundle.label,
        outputs=outputs,
        timings_ms=_rounded(item.timings_ms),
    )
