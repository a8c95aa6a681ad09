"""Errors are data: every input that cannot be used yields a stable code and a readable message.

Codes are part of the product's interface (results.jsonl, metrics, quarantine folders): never rename
one; add new ones at the end.
"""

from __future__ import annotations

import re
from enum import StrEnum

_QUOTED = re.compile(r"b?'(?:[^'\\]|\\.)*'|b?\"(?:[^\"\\]|\\.)*\"")


class ErrorCode(StrEnum):
    NOT_FOUND = "not_found"  # an input path or glob that names nothing
    UNREADABLE = "unreadable"  # exists but cannot be opened/read (permissions, a folder, I/O error)
    NOT_DICOM = "not_dicom"
    TRUNCATED = "truncated"
    NO_PIXEL_DATA = "no_pixel_data"
    UNSUPPORTED_MODALITY = "unsupported_modality"
    UNSUPPORTED_PHOTOMETRIC = "unsupported_photometric"
    MULTI_FRAME = "multi_frame"
    MISSING_CODEC = "missing_codec"
    DECODE_FAILED = "decode_failed"
    TOO_SMALL = "too_small"
    INVALID_UID = "invalid_uid"
    BUNDLE_MISSING = "bundle_missing"
    BUNDLE_CORRUPT = "bundle_corrupt"
    BUNDLE_HASH_MISMATCH = "bundle_hash_mismatch"
    INFERENCE_FAILED = "inference_failed"
    WRITE_FAILED = "write_failed"
    INTERNAL = "internal_error"
    TOO_LARGE = "too_large"  # would decode to more than the pixel / byte limit (checked before decoding)
    DEGENERATE_IMAGE = "degenerate_image"  # the display image is constant or two-level: nothing to read
    DUPLICATE_INSTANCE = "duplicate_instance"  # a SOPInstanceUID already taken by another input of the study


class TriageError(Exception):
    """An error with a stable `code`; `message` says what is wrong and, where it helps, what to do."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
        # patient identifiers of the file's header when it was parsed (see triage.outputs.records.redact):
        # values to keep out of records and logs, never shown
        self.identifiers: tuple[str, ...] = ()


def safe_text(exc: BaseException, limit: int = 300) -> str:
    """``exc``'s message on one line with every quoted value replaced by '…': pydicom and highdicom quote
    the header value they reject (``Unable to convert 'DOE^JOHN' ...``), and records, the job store and
    logs name the attribute, never its value."""
    text = _QUOTED.sub("'…'", " ".join(str(exc).split()))
    return text if len(text) <= limit else text[: limit - 1] + "…"
