"""The per-input result record written to results.jsonl (one JSON object per line)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["ok", "error"]


@dataclass
class ResultRecord:
    """One input file's outcome. Error records carry `error_code` and `message`; results carry the rest.

    probability: the classifier's P(pneumothorax) after TTA. positive: the gate decision (probability ≥
    the bundle's gate threshold) and a non-empty mask after triplet thresholding. mask_area_px: pixels
    in the mask on the source grid. priority: the worklist's sort key (higher = more urgent).
    outputs: written files, relative to --out, by kind (mask_png, overlay_png, seg, sc, sr).
    timings_ms: milliseconds per stage (read, preprocess, gate, segment, saliency, write).
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
    bundle: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=False, separators=(",", ":"))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ResultRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})
