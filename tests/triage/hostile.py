"""A corpus of hostile and unusual DICOM files, crafted with pydicom by the tests (no committed binaries).

Each builder writes one file and returns its path.  Patient attributes carry *markers*
(:data:`MARKERS`): strings that must never appear in results.jsonl, the job store or the logs.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID

from triage.synth.dicom_writer import Acquisition, Identity, build_dataset, write_dataset

ROOT = "1.2.826.0.1.3680043.8.498.1414"
MARKER_NAME = "ZEBRAQUUX^MARKERFIRST"
MARKER_ID = "PIDMARKER7731"
MARKER_BIRTH = "19370229"  # not a date: 1937 is no leap year
MARKERS = ("ZEBRAQUUX", "MARKERFIRST", MARKER_ID, MARKER_BIRTH)


def identity(n: int, study: int | None = None) -> Identity:
    """Identity ``n``: its own SOP; study ``study`` (default ``n``)."""
    s = n if study is None else study
    return Identity(
        MARKER_ID, MARKER_NAME, "O", 50, f"{ROOT}.{s}", f"{ROOT}.{s}.1", f"{ROOT}.{s}.1.{n}", "20240102",
        "101500", "ACC1",
    )


def gradient(size: int = 256) -> np.ndarray:
    """A display image with structure (a diagonal gradient and a dark disc), float32 in [0, 1]."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    disc = ((yy - 0.4) ** 2 + (xx - 0.35) ** 2) < 0.04
    return np.where(disc, 0.05, 0.1 + 0.4 * (xx + yy)).astype(np.float32)


def radiograph(n: int, size: int = 256, study: int | None = None, display: np.ndarray | None = None,
               **acq: object) -> pydicom.Dataset:
    """A 12-bit MONOCHROME2 CR of :func:`gradient` (or ``display``), identity ``n`` with the markers."""
    options: dict[str, object] = {"modality": "CR", "photometric": "MONOCHROME2", "view": "PA",
                                  "pixel_spacing_mm": 0.14, **acq}
    image = gradient(size) if display is None else display
    ds = build_dataset(image, Acquisition(**options), identity(n, study))  # type: ignore[arg-type]
    ds.PatientBirthDate = MARKER_BIRTH  # a marker, and no date: the outputs must drop it
    return ds


def save(ds: pydicom.Dataset, path: Path) -> Path:
    write_dataset(ds, path)
    return path


def save_raw(ds: pydicom.Dataset, path: Path, syntax: UID) -> Path:
    """Write ``ds`` as is under ``syntax`` (no validation, no re-encoding of Pixel Data)."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    ds.preamble = b"\0" * 128
    little = syntax != pydicom.uid.ExplicitVRBigEndian
    implicit = syntax == pydicom.uid.ImplicitVRLittleEndian
    pydicom.dcmwrite(path, ds, implicit_vr=implicit, little_endian=little, force_encoding=True)
    return path


# --- memory bombs ---------------------------------------------------------------------------------------


def _siz(rows: int, columns: int) -> bytes:
    """A JPEG 2000 main header (SOC, SIZ for one 16-bit component, COD, QCD) and a stub tile."""
    siz = (
        b"\xff\x51" + (41).to_bytes(2, "big") + b"\0\0" + columns.to_bytes(4, "big") + rows.to_bytes(4, "big")
        + b"\0" * 8 + columns.to_bytes(4, "big") + rows.to_bytes(4, "big") + b"\0" * 8
        + (1).to_bytes(2, "big") + bytes([15, 1, 1])
    )
    cod = b"\xff\x52\x00\x0c\x00\x00\x00\x01\x00\x05\x04\x04\x00\x01"
    qcd = b"\xff\x5c\x00\x04\x00\x40"
    tile = b"\xff\x90\x00\x0a\x00\x00\x00\x00\x00\x0e\x00\x01\xff\x93" + b"\0" * 64
    return b"\xff\x4f" + siz + cod + qcd + tile + b"\xff\xd9"


def j2k_bomb(path: Path, header: int = 65535, codestream: int = 65535, n: int = 90) -> Path:
    """JPEG 2000 whose Rows/Columns are ``header`` and whose codestream declares ``codestream`` square."""
    ds = radiograph(n, 128)
    ds.Rows = ds.Columns = header
    ds.PixelData = encapsulate([_siz(codestream, codestream)])
    ds["PixelData"].VR = "OB"
    ds.PhotometricInterpretation = "MONOCHROME2"
    return save_raw(ds, path, pydicom.uid.JPEG2000Lossless)


def rle_bomb(path: Path, side: int = 60000, n: int = 91) -> Path:
    """RLE Lossless declaring ``side``² 16-bit pixels with one tiny frame (the RLE header of two segments)."""
    ds = radiograph(n, 128)
    ds.Rows = ds.Columns = side
    header = (2).to_bytes(4, "little") + (64).to_bytes(4, "little") + (66).to_bytes(4, "little") + b"\0" * 52
    ds.PixelData = encapsulate([header + b"\x81\x00\x81\x00"])
    ds["PixelData"].VR = "OB"
    return save_raw(ds, path, pydicom.uid.RLELossless)


def deflate_bomb(path: Path, inflated_mb: int = 2500, n: int = 92) -> Path:
    """Deflated Explicit VR Little Endian whose data set inflates to ``inflated_mb`` MB (a Pixel Data of
    zeros under a 256² header that does not match it); the file is a few MB."""
    ds = radiograph(n, 256)
    save_raw(ds, path, pydicom.uid.ExplicitVRLittleEndian)
    raw = path.read_bytes()
    pixel_at = raw.index(b"\xe0\x7f\x10\x00")  # the original Pixel Data element: replaced by a huge one
    with open(path, "rb") as fh:
        pydicom.filereader.read_preamble(fh, False)
        pydicom.filereader._read_file_meta_info(fh)
        body_start = fh.tell()
    length = inflated_mb * 2**20
    element = b"\xe0\x7f\x10\x00OW\0\0" + length.to_bytes(4, "little")
    # a full flush byte-aligns the stream and resets the window: one compressed block of zeros repeats
    head = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    prefix = head.compress(raw[body_start:pixel_at] + element) + head.flush(zlib.Z_FULL_FLUSH)
    block = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = block.compress(b"\0" * 2**24) + block.flush(zlib.Z_FULL_FLUSH)
    parts = [prefix, zeros * (length // 2**24), b"\x03\x00"]  # then an empty final block
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    buffer = DicomBytesIO()
    buffer.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buffer, ds.file_meta, enforce_standard=True)
    meta = buffer.getvalue()
    path.write_bytes(bytes(meta) + b"".join(parts))
    return path


def sparse_bomb(path: Path, gigabytes: float = 3.0, n: int = 93) -> Path:
    """A 256² native file whose Pixel Data element is ``gigabytes`` long, as a sparse file (holes)."""
    ds = radiograph(n, 256)
    save_raw(ds, path, pydicom.uid.ExplicitVRLittleEndian)
    raw = path.read_bytes()
    at = raw.index(b"\xe0\x7f\x10\x00")
    length = int(gigabytes * 2**30) & ~1
    with open(path, "r+b") as fh:
        fh.seek(at)
        fh.write(b"\xe0\x7f\x10\x00OW\0\0" + length.to_bytes(4, "little"))
        fh.truncate(at + 12 + length)
    return path


def huge_native_header(path: Path, n: int = 94) -> Path:
    """A native file declaring 40000² 16-bit pixels as a sparse file of the matching (3.2 GB) length."""
    ds = radiograph(n, 256)
    ds.Rows = ds.Columns = 40000
    save_raw(ds, path, pydicom.uid.ExplicitVRLittleEndian)
    raw = path.read_bytes()
    at = raw.index(b"\xe0\x7f\x10\x00")
    length = 40000 * 40000 * 2
    with open(path, "r+b") as fh:
        fh.seek(at)
        fh.write(b"\xe0\x7f\x10\x00OW\0\0" + length.to_bytes(4, "little"))
        fh.truncate(at + 12 + length)
    return path


BOMBS = {
    "j2k_header.dcm": lambda p: j2k_bomb(p),
    "j2k_codestream.dcm": lambda p: j2k_bomb(p, header=256, n=95),
    "rle.dcm": rle_bomb,
    "deflate.dcm": deflate_bomb,
    "sparse.dcm": sparse_bomb,
    "huge_native.dcm": huge_native_header,
}


# --- a batch of unusual inputs (issue 14: each gets exactly one record) -----------------------------------


def big_endian(ds: pydicom.Dataset, path: Path) -> Path:
    """``ds`` as Explicit VR Big Endian, its 16-bit pixels byte-swapped as that syntax requires."""
    pixels = ds.pixel_array.astype(np.uint16)
    ds.PixelData = pixels.astype(">u2").tobytes()
    ds["PixelData"].VR = "OW"
    return save_raw(ds, path, pydicom.uid.ExplicitVRBigEndian)


def unusual_batch(folder: Path) -> dict[str, str | None]:
    """Write the corpus under ``folder``; returns {path as the batch will name it: expected error code or
    None}. Every image carries the markers, and a PatientBirthDate that is no date; ``positive_*`` and
    the little/big-endian twins add other invalid demographics; ``dup_*`` are one instance twice; one
    file has a name that is not UTF-8; a folder is named after the patient; a FIFO, a dangling link and
    a link loop sit beside them."""
    folder.mkdir(parents=True)
    expect: dict[str, str | None] = {}

    def add(name: str, ds: pydicom.Dataset, code: str | None = None) -> None:
        expect[str(save(ds, folder / name))] = code

    add("twin_le.dcm", radiograph(1))
    expect[str(big_endian(radiograph(2), folder / "twin_be.dcm"))] = None
    bad_sex = radiograph(3)
    bad_sex.PatientSex = "X"
    add("positive_sex.dcm", bad_sex)
    charset = radiograph(4)
    charset.SpecificCharacterSet = "ISO_IR 999"
    add("positive_charset.dcm", charset)
    name = radiograph(5)
    name.PatientName = MARKER_NAME + "^A^B^C^D^E"  # more than five components
    add("positive_name.dcm", name)
    spacing = radiograph(6)
    spacing.ImagerPixelSpacing = spacing.PixelSpacing = ["1e300", "1e300"]
    add("huge_spacing.dcm", spacing)
    add("constant.dcm", radiograph(7, display=np.full((256, 256), 0.4, np.float32)), "degenerate_image")
    slope = radiograph(8)
    slope.RescaleSlope = 0
    add("slope0.dcm", slope, "degenerate_image")
    add("dup_a.dcm", radiograph(9))
    add("dup_b.dcm", radiograph(9), "duplicate_instance")
    other_study = radiograph(10)
    other_study.SOPInstanceUID = radiograph(9).SOPInstanceUID  # the same SOP UID in another study
    other_study.file_meta.MediaStorageSOPInstanceUID = other_study.SOPInstanceUID
    add("same_sop_other_study.dcm", other_study)
    path = Path(os.fsdecode(bytes(folder) + b"/latin1_\xe9.dcm"))
    expect[str(save(radiograph(11), path))] = None
    (folder / "ZEBRAQUUX_MARKERFIRST").mkdir()
    add("ZEBRAQUUX_MARKERFIRST/case.dcm", radiograph(12))
    (folder / "notes.txt").write_text("not an image")
    expect[str(folder / "notes.txt")] = "not_dicom"
    os.mkfifo(folder / "pipe.dcm")
    (folder / "dangling.dcm").symlink_to(folder / "nowhere.dcm")
    (folder / "loop.dcm").symlink_to("loop.dcm")
    expect.update({str(folder / n): "unreadable" for n in ("pipe.dcm", "dangling.dcm", "loop.dcm")})
    return expect
