"""Atomic file writes: a temporary file in the target's folder, fsync, then ``os.replace``.

A reader (or a resumed batch) sees either the old file or the complete new one, never a partial file.
Failures (disk full, permissions, a folder in the way) raise ``TriageError(WRITE_FAILED)`` naming the
path and the OS error; the temporary file is removed.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
from PIL import Image

from triage.errors import ErrorCode, TriageError

logger = logging.getLogger(__name__)


def _atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(fh)`` on a temp file beside ``path``, fsync it and rename it onto ``path``."""
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        tmp = Path(tmp_name)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.chmod(0o644)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno is not None else str(exc)
        raise TriageError(
            ErrorCode.WRITE_FAILED, f"could not write {path}: {reason} ({type(exc).__name__}: {exc})"
        ) from exc
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    logger.debug("wrote %s", path)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (parents created). Raises TriageError(WRITE_FAILED)."""

    def write(fh: BinaryIO) -> None:
        fh.write(data)

    _atomic_write(path, write)


def atomic_save_png(path: Path, array: np.ndarray, compress_level: int = 1) -> None:
    """Save ``array`` (uint8 HxW grey or HxWx3 RGB) as a PNG at ``path`` atomically.

    ``compress_level`` is zlib's 0..9; the default 1 encodes a 1024² RGB overlay about 5x faster than
    Pillow's default 6 for files about 30% larger (the batch's write stage is on the critical path).

    Raises ValueError for another dtype/shape, TriageError(WRITE_FAILED) if the file cannot be written.
    """
    arr = np.asarray(array)
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ValueError(f"PNG array must be uint8 HxW or HxWx3; got {arr.dtype} with shape {arr.shape}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buffer, format="PNG", compress_level=compress_level)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_save_dataset(path: Path, ds: pydicom.Dataset) -> None:
    """Write ``ds`` (with file_meta) as a DICOM Part 10 file at ``path`` atomically.

    The dataset is encoded in memory first, so an encoding error (ValueError etc.) leaves no file.
    Raises TriageError(WRITE_FAILED) if the file cannot be written.
    """
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    atomic_write_bytes(path, buffer.getvalue())
