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


Problem = tuple[str, TriageError]  # (the entry or arg it concerns, why it gives no file)

_SPECIAL = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
            (stat.S_ISBLK, "a block device"))


def _is_file(path: Path, problems: list[Problem]) -> bool:
    """Whether ``path`` (a folder entry or a glob match; symbolic links followed) is a regular file; else
    its own UNREADABLE problem (a FIFO, a dangling link, a link loop, ...), so that nothing a folder holds
    goes without a record."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:  # a dangling link, a link loop, an entry that cannot be checked
        problems.append((str(path), TriageError(ErrorCode.UNREADABLE, f"cannot be checked: {exc.strerror}")))
        return False
    if stat.S_ISREG(mode):
        return True
    kind = next((name for test, name in _SPECIAL if test(mode)), "not a regular file")
    problems.append((str(path), TriageError(ErrorCode.UNREADABLE, f"{kind}, not a regular file: skipped")))
    return False


def _folder_files(folder: Path) -> tuple[list[Path], list[Problem]]:
    """(regular files under ``folder``, sorted; a problem per entry that could not be listed or is no
    regular file).  Hidden files and folders and DICOMDIR are skipped; symlinked folders are not followed
    (no loops), symlinked files are."""
    found: list[Path] = []
    problems: list[Problem] = []

    def unlisted(exc: OSError) -> None:
        error = TriageError(ErrorCode.UNREADABLE, f"cannot be listed: {exc.strerror}")
        problems.append((str(exc.filename), error))

    for root, dirs, names in os.walk(folder, onerror=unlisted):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        wanted = (n for n in sorted(names) if not n.startswith(".") and n not in SKIPPED_NAMES)
        found += [Path(root) / name for name in wanted if _is_file(Path(root) / name, problems)]
    return sorted(found), sorted(problems, key=lambda p: p[0])


def _expand(arg: str) -> tuple[list[Path], list[Problem]]:
    """(files, problems) for one arg; see :func:`expand_inputs`."""
    path = Path(arg)
    problems: list[Problem] = []
    if path.is_dir():
        files, problems = _folder_files(path)
        what = f"folder {arg!r} holds no files (hidden files and DICOMDIR are skipped)"
    elif path.is_file():
        return [path], []
    elif os.path.lexists(arg):
        special = TriageError(ErrorCode.UNREADABLE, f"{arg!r} is not a regular file, folder or glob")
        return [], [(arg, special)]
    elif GLOB_CHARS & set(arg):
        files, what = [], f"glob {arg!r} matches no files"
        for match in map(Path, sorted(glob.glob(arg, recursive=True))):
            if match.is_dir():
                sub_files, sub_problems = _folder_files(match)
                files, problems = files + sub_files, problems + sub_problems
            elif match.name not in SKIPPED_NAMES and _is_file(match, problems):
                files.append(match)
    else:
        return [], [(arg, TriageError(ErrorCode.NOT_FOUND, f"{arg!r}: no such file, folder or glob"))]
    if not files and not problems:
        problems.append((arg, TriageError(ErrorCode.NOT_FOUND, what)))
    return files, problems


def expand_inputs(args: Sequence[str]) -> tuple[list[Path], list[tuple[str, TriageError]]]:
    """Files named by ``args`` (files, folders searched recursively, globs with ``*``, ``?``, ``[``, ``**``).

    Returns (files, errors): files deduplicated by real path, in args order and sorted within a folder or
    glob; errors pair an arg with NOT_FOUND (it names nothing: no such path, a glob without matches, a
    folder without files) or UNREADABLE (a special file, a parent without permission), and each entry of
    a folder or glob that is no regular file (a FIFO, a dangling link, a link loop) or cannot be listed
    with UNREADABLE, keyed by the entry's own path: every entry gets its own record, once.  A file named
    explicitly is kept even if hidden or called DICOMDIR; folders and globs skip those.
    """
    files: list[Path] = []
    seen: set[str] = set()
    errors: list[Problem] = []
    for arg in args:
        try:
            found, problems = _expand(arg)
        except OSError as exc:  # e.g. a parent folder without search permission
            found, problems = [], [(arg, TriageError(ErrorCode.UNREADABLE, f"{arg!r}: {exc.strerror}"))]
        for key, problem in problems:
            if key not in seen:
                seen.add(key)
                errors.append((key, problem))
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
