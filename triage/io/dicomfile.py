"""The DICOM file layer: stat, open and parse one file into a pydicom data set, with the fatal-error table.

:func:`open_dataset` is the file layer of the reader (:mod:`triage.io.dicom` builds on it) and
:func:`read_header` its fast header-only form; both raise only TriageError: NOT_FOUND, UNREADABLE,
NOT_DICOM, TRUNCATED or DECODE_FAILED (a header pydicom cannot parse).  Messages never repeat the path.

Files without preamble / "DICM" are read with ``force=True`` only if they start with a group 0002 or 0008
tag (either byte order) and the result holds a valid SOPClassUID (no text or binary file yields one by
chance); the image checks (e.g. NO_PIXEL_DATA) then apply.  pydicom silently drops or shortens elements
cut off by the end of the file, so truncation is detected here from the element lengths.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import struct
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom import uid as uids
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from triage.errors import ErrorCode, TriageError, safe_text
from triage.io.codestream import DEFAULT_LIMIT, SizeLimit, check_file_size, check_inflated_size

logger = logging.getLogger(__name__)

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
    return TriageError(code, f"{type(exc).__name__}: {safe_text(exc)}")


def text_value(ds: pydicom.Dataset, keyword: str) -> str:
    """``keyword``'s value as stripped text; "" when absent or unparseable (a damaged value must not stop a
    check that only reads it)."""
    try:
        value = ds.get(keyword)
    except Exception:
        return ""
    return "" if value is None else str(value).strip()


def _check_deflated(fh: BinaryIO, limit: SizeLimit) -> None:
    """For a Deflated Explicit VR Little Endian file, TOO_LARGE before pydicom inflates it whole."""
    try:
        preamble = pydicom.filereader.read_preamble(fh, False)
        meta = pydicom.filereader._read_file_meta_info(fh) if preamble is not None else None
    except Exception:
        meta = None  # not a file with a meta header: the parser below decides
    if meta is not None and meta.get("TransferSyntaxUID") == uids.DeflatedExplicitVRLittleEndian:
        check_inflated_size(fh, limit)
    fh.seek(0)


IDENTIFYING = ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "OtherPatientNames",
               "PatientMotherBirthName", "AccessionNumber")
_MIN_LENGTH = 3  # shorter name components ("O", "JR") would blank out ordinary path text


def patient_identifiers(ds: pydicom.Dataset) -> tuple[str, ...]:
    """The patient-identifying values of ``ds`` (name components, IDs, birth date, accession number) as
    text to keep out of records: longest first, each at least 3 characters."""
    found: set[str] = set()
    for keyword in IDENTIFYING:
        try:
            value = ds.get(keyword)
        except Exception:
            continue
        values = value if isinstance(value, pydicom.multival.MultiValue) else [value]
        for item in values:
            text = "" if item is None else str(item).strip()
            found.update(p.strip() for p in re.split(r"[\^=]", text) if len(p.strip()) >= _MIN_LENGTH)
            if len(text) >= _MIN_LENGTH:
                found.add(text)
    return tuple(sorted(found, key=len, reverse=True))


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


def open_dataset(
    path: Path, stop_before_pixels: bool = False, limit: SizeLimit | None = None
) -> pydicom.Dataset:
    """Stat, open and parse ``path``: NOT_FOUND, UNREADABLE, NOT_DICOM, TRUNCATED or DECODE_FAILED; with
    a ``limit``, TOO_LARGE for a file (or an inflated deflated data set) larger than its bytes, checked
    before reading it (Pixel Data is read whole)."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            what = "a folder" if stat.S_ISDIR(mode) else f"a special file ({stat.filemode(mode)})"
            raise TriageError(ErrorCode.UNREADABLE, f"is {what}, not a regular file")
        with path.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if limit is not None:
                if not stop_before_pixels:
                    check_file_size(size, limit)
                _check_deflated(fh, limit)
            ds = _parse(fh, stop_before_pixels)
        _check_complete(ds, size, stop_before_pixels)
        _ensure_transfer_syntax(ds)
    except TriageError:
        raise
    except FileNotFoundError as exc:
        raise TriageError(ErrorCode.NOT_FOUND, f"no such file ({exc.strerror})") from exc
    except (EOFError, struct.error) as exc:
        message = f"the file ends early ({type(exc).__name__}: {safe_text(exc)})"
        raise TriageError(ErrorCode.TRUNCATED, message) from exc
    except OSError as exc:
        if exc.errno is None:  # pydicom's own OSError("No tag to read at file position ...")
            raise TriageError(ErrorCode.TRUNCATED, f"the file ends early ({safe_text(exc)})") from exc
        raise TriageError(ErrorCode.UNREADABLE, f"cannot read: {exc.strerror} (errno {exc.errno})") from exc
    except FATAL:
        raise
    except BaseException as exc:
        message = f"the header cannot be parsed: {type(exc).__name__}: {safe_text(exc)}"
        raise TriageError(ErrorCode.DECODE_FAILED, message) from exc
    return ds


def read_header(path: Path, limit: SizeLimit | None = DEFAULT_LIMIT) -> pydicom.Dataset:
    """The header of ``path`` without Pixel Data (fast; for grouping); raises only TriageError (see
    :func:`open_dataset` and :func:`unforeseen_error`); a deflated file is inflated within ``limit``."""
    try:
        return open_dataset(Path(path), stop_before_pixels=True, limit=limit)
    except (TriageError, *FATAL):
        raise
    except BaseException as exc:
        raise unforeseen_error(exc) from exc
