"""Inputs of ``triage predict``: command-line args → files → parsed DICOM data sets → studies.

:func:`expand_inputs` turns files, folders and globs into a stable, deduplicated file list.
:func:`open_dataset` is the file layer of the reader (:mod:`triage.io.dicom` builds on it) and
:func:`read_header` its fast header-only form; both raise only TriageError: NOT_FOUND, UNREADABLE,
NOT_DICOM, TRUNCATED or DECODE_FAILED (a header pydicom cannot parse).  Messages never repeat the path.

Files without preamble / "DICM" are read with ``force=True`` only if they start with a group 0002 or 0008
tag (either byte order) and the result holds a valid SOPClassUID (no text or binary file yields one by
chance); the image checks (e.g. NO_PIXEL_DATA) then apply.  pydicom silently drops or shortens elements
cut off by the end of the file, so truncation is detected here from the element lengths.
"""

from __future__ import annotations

import glob
import logging
import os
import stat
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom import uid as uids
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from triage.errors import ErrorCode, TriageError

logger = logging.getLogger(__name__)

GLOB_CHARS = frozenset("*?[")
SKIPPED_NAMES = frozenset({"DICOMDIR"})  # a media index, not an image
_SNIFF_GROUPS = frozenset({0x0002, 0x0008, 0x0800})  # first group of a meta-less file (0x0800: big endian)
FATAL = (KeyboardInterrupt, SystemExit)  # never mapped to a TriageError


def unforeseen_error(exc: BaseException) -> TriageError:
    """A TriageError for an exception nobody mapped: DECODE_FAILED when raised inside pydicom (a damaged
    file: unknown VR, bad value, a codec's panic), INTERNAL otherwise; both name the type and message."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    origin = str(tb.tb_frame.f_globals.get("__name__", "")) if tb is not None else ""
    code = ErrorCode.DECODE_FAILED if origin.split(".")[0] == "pydicom" else ErrorCode.INTERNAL
    return TriageError(code, f"{type(exc).__name__}: {' '.join(str(exc).split())}")


def text_value(ds: pydicom.Dataset, keyword: str) -> str:
    """``keyword``'s value as stripped text; "" when absent or unparseable (a damaged value must not stop a
    check that only reads it)."""
    try:
        value = ds.get(keyword)
    except Exception:
        return ""
    return "" if value is None else str(value).strip()


def _parse(fh: BinaryIO, stop_before_pixels: bool) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(fh, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError as exc:
        fh.seek(0)
        if int.from_bytes(fh.read(2), "little") in _SNIFF_GROUPS:
            fh.seek(0)
            try:
                ds = pydicom.dcmread(fh, force=True, stop_before_pixels=stop_before_pixels)
            except Exception:
                ds = None
            if ds is not None and UID(text_value(ds, "SOPClassUID")).is_valid:
                logger.info("reading a DICOM data set without preamble / file meta header")
                return ds
        message = "not a DICOM file: no 'DICM' at byte 128, nor a leading data set with a valid SOPClassUID"
        raise TriageError(ErrorCode.NOT_DICOM, message) from exc


def _check_complete(ds: pydicom.Dataset, size: int, stop_before_pixels: bool) -> None:
    """TRUNCATED when the file (``size`` bytes) ends inside an element."""
    if len(ds) == 0:  # pydicom drops the whole data set when EOF hits an undefined-length element
        message = (
            "no data element after the file meta: the file ends early or inside an undefined-length element"
        )
        raise TriageError(ErrorCode.TRUNCATED, message)
    last: RawDataElement | None = None
    for elem in ds.values():  # raw: converting (what ds.elements() may do) can fail on a damaged file
        if not isinstance(elem, RawDataElement) or elem.length == 0xFFFFFFFF:
            continue
        if isinstance(elem.value, bytes) and len(elem.value) < elem.length:
            where = f"{elem.tag} {keyword_for_tag(elem.tag) or 'private'}"
            message = (
                f"the file ends inside {where}: {len(elem.value)} of its {elem.length} bytes are present"
            )
            raise TriageError(ErrorCode.TRUNCATED, message)
        last = elem if last is None or elem.value_tell > last.value_tell else last
    tail = 0 if last is None else size - (last.value_tell + last.length)
    if not stop_before_pixels and "PixelData" not in ds and 0 < tail < 8:  # pydicom drops a partial header
        raise TriageError(ErrorCode.TRUNCATED, f"the file ends inside a data element header at byte {size}")


def _ensure_transfer_syntax(ds: pydicom.Dataset) -> None:
    """A file without file meta gets the syntax pydicom parsed it with (unknowable for encapsulated data)."""
    meta = getattr(ds, "file_meta", None)
    meta = FileMetaDataset() if meta is None else meta
    if "TransferSyntaxUID" in meta or ("PixelData" in ds and ds["PixelData"].is_undefined_length):
        return
    implicit, little = ds.original_encoding
    ts = uids.ImplicitVRLittleEndian if implicit else uids.ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.file_meta.TransferSyntaxUID = ts if little is not False else uids.ExplicitVRBigEndian


def open_dataset(path: Path, stop_before_pixels: bool = False) -> pydicom.Dataset:
    """Stat, open and parse ``path``: NOT_FOUND, UNREADABLE, NOT_DICOM, TRUNCATED or DECODE_FAILED."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            what = "a folder" if stat.S_ISDIR(mode) else f"a special file ({stat.filemode(mode)})"
            raise TriageError(ErrorCode.UNREADABLE, f"is {what}, not a regular file")
        with path.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            ds = _parse(fh, stop_before_pixels)
        _check_complete(ds, size, stop_before_pixels)
        _ensure_transfer_syntax(ds)
    except TriageError:
        raise
    except FileNotFoundError as exc:
        raise TriageError(ErrorCode.NOT_FOUND, f"no such file ({exc.strerror})") from exc
    except (EOFError, struct.error) as exc:
        raise TriageError(ErrorCode.TRUNCATED, f"the file ends early ({type(exc).__name__}: {exc})") from exc
    except OSError as exc:
        if exc.errno is None:  # pydicom's own OSError("No tag to read at file position ...")
            raise TriageError(ErrorCode.TRUNCATED, f"the file ends early ({exc})") from exc
        raise TriageError(ErrorCode.UNREADABLE, f"cannot read: {exc.strerror} (errno {exc.errno})") from exc
    except FATAL:
        raise
    except BaseException as exc:
        message = f"the header cannot be parsed: {type(exc).__name__}: {exc}"
        raise TriageError(ErrorCode.DECODE_FAILED, message) from exc
    return ds


def read_header(path: Path) -> pydicom.Dataset:
    """The header of ``path`` without Pixel Data (fast; for grouping); raises only TriageError (see
    :func:`open_dataset` and :func:`unforeseen_error`)."""
    try:
        return open_dataset(Path(path), stop_before_pixels=True)
    except (TriageError, *FATAL):
        raise
    except BaseException as exc:
        raise unforeseen_error(exc) from exc


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
