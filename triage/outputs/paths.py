"""Output locations derived only from validated DICOM UIDs, so no input value can steer a path.

A UID from a file (StudyInstanceUID, SOPInstanceUID) is untrusted text: ``../../x`` or ``a/b`` must
never become part of a path. Every name under ``--out`` is built from a UID that passed
:func:`validated_uid`, and :func:`study_dir` also checks the resolved result stays inside ``out``.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

from pydicom.uid import UID

from triage.errors import ErrorCode, TriageError

MAX_UID_LENGTH = 64
_DIGITS_AND_DOTS = re.compile(r"^[0-9.]+$")


def validated_uid(uid: str, what: str) -> str:
    """``uid`` unchanged if it is a valid DICOM UID (≤ 64 chars, digits and dots, PS3.5 §9.1).

    ``what`` names the attribute (e.g. "StudyInstanceUID") in the error. Raises
    ``TriageError(INVALID_UID)`` naming ``what`` and the offending value otherwise.
    """
    if not isinstance(uid, str):
        raise TriageError(ErrorCode.INVALID_UID, f"{what} must be a string; got {type(uid).__name__}")
    with warnings.catch_warnings():  # pydicom warns about the invalid value; we raise instead
        warnings.simplefilter("ignore")
        valid = len(uid) <= MAX_UID_LENGTH and bool(_DIGITS_AND_DOTS.match(uid)) and UID(uid).is_valid
    if not valid:
        shown = uid if len(uid) <= 80 else uid[:77] + "..."
        raise TriageError(
            ErrorCode.INVALID_UID,
            f"{what}={shown!r} is not a valid DICOM UID (digits and dots, components without leading "
            f"zeros, at most {MAX_UID_LENGTH} characters)",
        )
    return uid


def study_dir(out: Path, study_uid: str) -> Path:
    """``out / "studies" / study_uid`` after validating ``study_uid``; never outside ``out``.

    Raises ``TriageError(INVALID_UID)`` for a bad UID, and ``TriageError(INTERNAL)`` if the resolved
    folder would lie outside ``out`` (cannot happen for a valid UID; defence in depth against symlinks).
    """
    uid = validated_uid(study_uid, "StudyInstanceUID")
    folder = Path(out) / "studies" / uid
    root = Path(out).resolve()
    resolved = folder.resolve()
    if not resolved.is_relative_to(root):
        raise TriageError(
            ErrorCode.INTERNAL, f"study folder {resolved} for StudyInstanceUID={uid!r} escapes {root}"
        )
    return folder
