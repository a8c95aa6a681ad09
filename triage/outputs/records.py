"""The per-input result record written to results.jsonl (one JSON object per line)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["ok", "error"]
REDACTED = "[redacted]"


def redact(text: str, values: Iterable[str]) -> str:
    """``text`` with every occurrence of ``values`` (case-insensitive, not inside a longer run of letters
    and digits: "Lee" leaves "colleen" alone) replaced by [redacted]."""
    for value in values:
        if value:
            pattern = rf"(?<![^\W_]){re.escape(value)}(?![^\W_])"
            text = re.sub(pattern, REDACTED, text, flags=re.IGNORECASE)
    return text


def input_digest(path: str) -> str:
    """The SHA-256 of an input path as given: a record's key for --resume when its path was redacted."""
    return hashlib.sha256(path.encode("utf-8", "surrogateescape")).hexdigest()


def _finite(value: Any) -> Any:
    """JSON has no Infinity / NaN: such numbers become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


@dataclass
class ResultRecord:
    """One input file's outcome. Error records carry `error_code` and `message`; results carry the rest.

    probability: the classifier's P(pneumothorax) after TTA. positive: the gate decision (probability ≥
    the bundle's gate threshold) and a non-empty mask after triplet thresholding. mask_area_px: pixels
    in the mask on the source grid. priority: the worklist's sort key (higher = more urgent).
    saliency_probability: the bundle's saliency model's own P(pneumothorax) (its classification head, or
    a dual-encoder model's fused head), on gated images when saliency maps are on; advisory: neither the
    gate, the positive flag nor the priority uses it.
    outputs: written files, relative to --out, by kind (mask_png, overlay_png, seg, sc, sr).
    timings_ms: milliseconds per stage (read, preprocess, gate, segment, saliency, write).
    input: the path as given, except that text equal to the file's own patient name components, IDs,
    birth date or accession number is replaced by [redacted] (folders named after patients are common);
    input_sha256: the SHA-256 of the path as given (how --resume and merges recognise the file).
    """

    input: str
    status: Status
    error_code: str | None = None
    message: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    sop_uid: str | None = None
    probability: float | None = None
    positive: bool | None = None
    gated: bool | None = None  # whether the segmenter ran
    mask_area_px: int | None = None
    mask_area_mm2: float | None = None
    priority: float | None = None
    saliency_probability: float | None = None
    bundle: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    input_sha256: str | None = None

    def to_json(self) -> str:
        values = {k: _finite(v) for k, v in dataclasses.asdict(self).items()}
        return json.dumps(values, sort_keys=False, separators=(",", ":"), allow_nan=False)

    @property
    def key(self) -> str:
        """What identifies the input: its path digest (paths may be redacted), else the path."""
        return self.input_sha256 or self.input

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ResultRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})
