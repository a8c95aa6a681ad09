"""Inputs of ``triage predict``: command-line args → files → studies.

:func:`expand_inputs` turns files, folders and globs into a stable, deduplicated file list;
:func:`group_by_study` groups parsed headers by StudyInstanceUID.  Opening and parsing one file is the file
layer's job (:mod:`triage.io.dicomfile`).
"""

from __future__ import annotations

import glob
import logging
import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path

import pydicom

from triage.errors import ErrorCode, TriageError
from triage.io.dicomfile import text_value

logger = logging.getLogger(__name__)

GLOB_CHARS = frozenset("*?[")
SKIPPED_NAMES = frozenset({"DICOMDIR"})  # a media index, not an image


def _is_file(path: Path, errors: list[str]) -> bool:
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError as exc:  # e.g. a folder that can be listed but not entered
        errors.append(f"{path.name}: {exc.strerror}")
        return False


def _folder_files(folder: Path) -> tuple[list[Path], list[str]]:
    """(regular files under ``folder``, sorted; what could not be listed or checked).  Hidden files and
    folders and DICOMDIR are skipped; symlinked folders are not followed (no loops), symlinked files are."""
    found: list[Path] = []
    errors: list[str] = []
    for root, dirs, names in os.walk(folder, onerror=lambda e: errors.append(f"{e.filename}: {e.strerror}")):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [
            Path(root) / name
            for name in names
            if not name.startswith(".") and name not in SKIPPED_NAMES and _is_file(Path(root) / name, errors)
        ]
    return sorted(found), errors


def _expand(arg: str) -> tuple[list[Path], list[TriageError]]:
    """(files, errors) for one arg; see :func:`expand_inputs`."""
    path = Path(arg)
    problems: list[str] = []
    if path.is_dir():
        files, problems = _folder_files(path)
        what = f"folder {arg!r} holds no files (hidden files and DICOMDIR are skipped)"
    elif path.is_file():
        return [path], []
    elif os.path.lexists(arg):
        return [], [TriageError(ErrorCode.UNREADABLE, f"{arg!r} is not a regular file, folder or glob")]
    elif GLOB_CHARS & set(arg):
        files, what = [], f"glob {arg!r} matches no files"
        for match in map(Path, sorted(glob.glob(arg, recursive=True))):
            if match.is_dir():
                sub_files, sub_problems = _folder_files(match)
                files, problems = files + sub_files, problems + sub_problems
            elif match.name not in SKIPPED_NAMES and _is_file(match, problems):
                files.append(match)
    else:
        return [], [TriageError(ErrorCode.NOT_FOUND, f"{arg!r}: no such file, folder or glob")]
    errors: list[TriageError] = []
    if problems:
        message = f"{arg!r}: {len(problems)} entries cannot be read: {'; '.join(problems[:3])}"
        errors.append(TriageError(ErrorCode.UNREADABLE, message))
    elif not files:
        errors.append(TriageError(ErrorCode.NOT_FOUND, what))
    return files, errors


def expand_inputs(args: Sequence[str]) -> tuple[list[Path], list[tuple[str, TriageError]]]:
    """Files named by ``args`` (files, folders searched recursively, globs with ``*``, ``?``, ``[``, ``**``).

    Returns (files, errors): files deduplicated by real path, in args order and sorted within a folder or
    glob; errors pair an arg with NOT_FOUND (it names nothing: no such path, a glob without matches, a
    folder without files) or UNREADABLE (a special file, entries that cannot be listed or checked).  A file
    named explicitly is kept even if hidden or called DICOMDIR; folders and globs skip those.
    """
    files: list[Path] = []
    seen: set[str] = set()
    errors: list[tuple[str, TriageError]] = []
    for arg in args:
        try:
            found, problems = _expand(arg)
        except OSError as exc:  # e.g. a parent folder without search permission
            found, problems = [], [TriageError(ErrorCode.UNREADABLE, f"{arg!r}: {exc.strerror}")]
        errors += [(arg, problem) for problem in problems]
        for path in found:
            if (key := os.path.realpath(path)) not in seen:
                seen.add(key)
                files.append(path)
    logger.info("%d input files from %d args (%d args with errors)", len(files), len(args), len(errors))
    return files, errors


def group_by_study(headers: Mapping[Path, pydicom.Dataset]) -> dict[str, list[Path]]:
    """StudyInstanceUID → paths, in the order of ``headers`` (studies by first appearance).

    A missing or unparseable StudyInstanceUID groups under "" (:func:`triage.io.dicom.read_image` rejects
    such files with INVALID_UID).
    """
    studies: dict[str, list[Path]] = {}
    for path, ds in headers.items():
        studies.setdefault(text_value(ds, "StudyInstanceUID"), []).append(path)
    return studies
