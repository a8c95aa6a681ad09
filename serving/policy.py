"""Which failures are worth retrying, and when.

Every :class:`triage.errors.ErrorCode` is classified (a test keeps it so when codes are added):

- ``PERMANENT`` — the file itself is unusable (not DICOM, truncated, wrong modality, a codec nobody has,
  ...): retrying cannot help, the file goes to the quarantine folder with its error record.
- ``TRANSIENT`` — the environment failed (disk full or an I/O error while writing, a file that cannot be
  opened right now, the model runtime failing, an unforeseen crash): the study is retried with
  exponential back-off, and marked ``failed`` after the last attempt (files stay where they are).
- ``FATAL`` — the model bundle is missing or damaged: the service refuses to start.
- ``GONE`` — the file disappeared before it was read: recorded, nothing to move.
"""

from __future__ import annotations

import random

from triage.errors import ErrorCode

PERMANENT = frozenset(
    {
        ErrorCode.NOT_DICOM,
        ErrorCode.TRUNCATED,
        ErrorCode.NO_PIXEL_DATA,
        ErrorCode.UNSUPPORTED_MODALITY,
        ErrorCode.UNSUPPORTED_PHOTOMETRIC,
        ErrorCode.MULTI_FRAME,
        ErrorCode.MISSING_CODEC,
        ErrorCode.DECODE_FAILED,
        ErrorCode.TOO_SMALL,
        ErrorCode.INVALID_UID,
        ErrorCode.TOO_LARGE,
        ErrorCode.DEGENERATE_IMAGE,
        ErrorCode.DUPLICATE_INSTANCE,
    }
)
TRANSIENT = frozenset(
    {
        ErrorCode.UNREADABLE,
        ErrorCode.INFERENCE_FAILED,
        ErrorCode.WRITE_FAILED,
        ErrorCode.INTERNAL,
    }
)
FATAL = frozenset({ErrorCode.BUNDLE_MISSING, ErrorCode.BUNDLE_CORRUPT, ErrorCode.BUNDLE_HASH_MISMATCH})
GONE = frozenset({ErrorCode.NOT_FOUND})


def classify(code: str | None) -> str:
    """'permanent', 'transient', 'fatal' or 'gone' for an error code (unknown codes: transient)."""
    try:
        member = ErrorCode(code or "")
    except ValueError:
        return "transient"
    for name, members in (
        ("permanent", PERMANENT),
        ("transient", TRANSIENT),
        ("fatal", FATAL),
        ("gone", GONE),
    ):
        if member in members:
            return name
    return "transient"


def backoff(attempt: int, base: float, cap: float, jitter: float = 0.1) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based): base·2^(attempt−1), at most
    ``cap``, plus up to ``jitter`` (fraction) so that many waiting items do not retry in lockstep."""
    delay = min(cap, base * 2.0 ** max(0, attempt - 1))
    return delay * (1.0 + jitter * random.random())
