"""`read_image` on messy input: one synthetic case per error code, codec presence, and a sweep over every
DICOM file bundled inside the installed pydicom package (nothing may escape but TriageError)."""

from __future__ import annotations

import logging
import os
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import gdcm
import numpy as np
import pydicom
import pytest
from pydicom.data.data_manager import DATA_ROOT
from pydicom.encaps import encapsulate
from pydicom.uid import UID

from triage.errors import ErrorCode, TriageError
from triage.io import dicom
from triage.io.dicom import DEFAULT_POLICY, LENIENT_POLICY, DicomImage, ReadPolicy, read_header, read_image
from triage.io.dicomfile import unforeseen_error
from triage.synth.dicom_writer import Acquisition, Compression, Identity, build_dataset, write_dataset

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the broken files

ROOT = "1.2.826.0.1.3680043.8.498.777"
IDENTITY = Identity(
    "SYN1", "SYNTHETIC^READ", "O", 50, f"{ROOT}.1", f"{ROOT}.2", f"{ROOT}.3", "20240102", "101500", "ACC1"
)


def dataset(size: int = 128, compression: Compression = "none", modality: str = "CR") -> pydicom.Dataset:
    """A 12-bit MONOCHROME2 radiograph of a diagonal gradient, (size, size) pixels."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    acq = Acquisition(modality, "MONOCHROME2", "PA", 0.14, compression=compression)  # type: ignore[arg-type]
    return build_dataset((0.1 + 0.4 * (xx + yy)).astype(np.float32), acq, IDENTITY)


def write(path: Path, ds: pydicom.Dataset) -> Path:
    write_dataset(ds, path)
    return path


def transcode(src: Path, dst: Path, syntax: int) -> Path:
    """Re-encode ``src`` with GDCM (the encoder pydicom lacks for JPEG lossless / baseline)."""
    reader, change, writer = gdcm.ImageReader(), gdcm.ImageChangeTransferSyntax(), gdcm.ImageWriter()
    reader.SetFileName(str(src))
    assert reader.Read()
    change.SetTransferSyntax(gdcm.TransferSyntax(syntax))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer.SetFileName(str(dst))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()
    return dst


def expect(path: Path, code: ErrorCode, *names: str, policy: ReadPolicy = DEFAULT_POLICY) -> TriageError:
    with pytest.raises(TriageError) as info:
        read_image(path, policy)
    assert info.value.code == code, info.value.message
    for name in names:
        assert name in info.value.message, (name, info.value.message)
    return info.value


# --- one case per code ---------------------------------------------------------------------------------


PIXEL_TAG = b"\xe0\x7f\x10\x00"


def _cut(tmp: Path, where: Callable[[bytes], int], compression: Compression = "none") -> Path:
    data = write(tmp / "full.dcm", dataset(compression=compression)).read_bytes()
    (tmp / "cut.dcm").write_bytes(data[: where(data)])
    return tmp / "cut.dcm"


@pytest.mark.parametrize(
    ("compression", "where", "named"),
    [
        ("none", lambda d: d.index(PIXEL_TAG) + 12 + 5000, "PixelData: 5000 of its 32768 bytes"),
        ("none", lambda d: d.index(PIXEL_TAG) + 3, "data element header"),
        ("none", lambda d: d.index(b"XR CHEST") + 3, "StudyDescription: 3 of its 8 bytes"),
        ("none", lambda d: 200, "file meta"),
        ("rle", lambda d: len(d) - 500, "undefined-length"),
    ],
    ids=["pixels", "pixel-tag", "header", "file-meta", "encapsulated"],
)
def test_truncated(
    tmp_path: Path, compression: Compression, where: Callable[[bytes], int], named: str
) -> None:
    expect(_cut(tmp_path, where, compression), ErrorCode.TRUNCATED, named)


def test_pixel_data_shorter_than_rows_times_columns(tmp_path: Path) -> None:
    ds = dataset()
    ds.Rows = 200  # the writer's own length is consistent: the header now promises more than is there
    expect(write(tmp_path / "short.dcm", ds), ErrorCode.TRUNCATED, "32768 bytes", "200×128×16", "51200")


def test_not_found_folder_and_special_file(tmp_path: Path) -> None:
    expect(tmp_path / "nope.dcm", ErrorCode.NOT_FOUND, "no such file")
    expect(tmp_path, ErrorCode.UNREADABLE, "folder")
    os.mkfifo(tmp_path / "fifo")  # opening it would block forever
    expect(tmp_path / "fifo", ErrorCode.UNREADABLE, "special file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files without read permission")
def test_no_read_permission(tmp_path: Path) -> None:
    path = write(tmp_path / "locked.dcm", dataset())
    path.chmod(0)
    expect(path, ErrorCode.UNREADABLE, "Permission denied")


def test_permission_error_maps_to_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same mapping where the suite runs as root: the open itself is made to fail."""
    path = write(tmp_path / "locked.dcm", dataset())

    def deny(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "open", deny)
    expect(path, ErrorCode.UNREADABLE, "Permission denied")
    with pytest.raises(TriageError, match="Permission denied"):
        read_header(path)


def test_not_dicom(tmp_path: Path) -> None:
    text = tmp_path / "notes.dcm"
    text.write_text("Patient is fine.\n" * 40)
    expect(text, ErrorCode.NOT_DICOM, "DICM")
    with pytest.raises(TriageError, match=r"^not_dicom"):
        read_header(text)
    binary = tmp_path / "blob"
    binary.write_bytes(b"\x08\x00" + bytes(range(256)) * 4)  # starts like a data set, holds no SOP class
    expect(binary, ErrorCode.NOT_DICOM, "SOPClassUID")


def test_data_set_without_preamble_and_file_meta_is_read(tmp_path: Path) -> None:
    data = write(tmp_path / "full.dcm", dataset()).read_bytes()
    meta_end = 144 + struct.unpack("<I", data[140:144])[0]
    (tmp_path / "bare").write_bytes(data[meta_end:])
    result = read_image(tmp_path / "bare")
    assert result.transfer_syntax == pydicom.uid.ExplicitVRLittleEndian
    assert float(np.abs(result.pixels - read_image(tmp_path / "full.dcm").pixels).max()) == 0.0


def test_no_pixel_data(tmp_path: Path) -> None:
    ds = dataset()
    del ds.PixelData
    expect(write(tmp_path / "nopix.dcm", ds), ErrorCode.NO_PIXEL_DATA, "Pixel Data", "Computed Radiography")


def test_unsupported_modality(tmp_path: Path) -> None:
    ct = dataset()
    ct.Modality, ct.SOPClassUID = "CT", pydicom.uid.CTImageStorage
    path = write(tmp_path / "ct.dcm", ct)
    expect(path, ErrorCode.UNSUPPORTED_MODALITY, "'CT'", "CT Image Storage", "Modality CR", "--any-modality")
    assert read_image(path, ReadPolicy(any_modality=True)).modality == "CT"


def test_dx_for_processing_is_raw_detector_data(tmp_path: Path) -> None:
    raw = dataset(modality="DX")
    raw.SOPClassUID = pydicom.uid.DigitalXRayImageStorageForProcessing
    raw.PresentationIntentType = "FOR PROCESSING"
    path = write(tmp_path / "raw.dcm", raw)
    expect(
        path, ErrorCode.UNSUPPORTED_MODALITY, "1.2.840.10008.5.1.4.1.1.1.1.1", "raw detector data", "--any"
    )
    presentation = write(tmp_path / "dx.dcm", dataset(modality="DX"))
    assert read_image(presentation).modality == "DX"


def test_rgb_is_unsupported_photometric(tmp_path: Path) -> None:
    ds = dataset()
    rgb = np.zeros((128, 128, 3), np.uint8)
    ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.PlanarConfiguration = "RGB", 3, 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = rgb.tobytes()
    expect(write(tmp_path / "rgb.dcm", ds), ErrorCode.UNSUPPORTED_PHOTOMETRIC, "'RGB'", "MONOCHROME1")


def test_two_frames(tmp_path: Path) -> None:
    ds = dataset()
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    expect(write(tmp_path / "two.dcm", ds), ErrorCode.MULTI_FRAME, "NumberOfFrames=2", "2 frames")


def test_missing_codec_names_syntax_and_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = write(tmp_path / "plain.dcm", dataset())
    jls = transcode(plain, tmp_path / "jls.dcm", gdcm.TransferSyntax.JPEGLSLossless)
    missing = ["gdcm - requires gdcm>=3.0.10", "pylibjpeg - requires pylibjpeg-libjpeg>=2.1"]
    fake = SimpleNamespace(is_available=False, available_plugins=(), missing_dependencies=missing)
    monkeypatch.setattr(dicom, "get_decoder", lambda uid: fake)
    error = expect(jls, ErrorCode.MISSING_CODEC, "JPEG-LS Lossless", "1.2.840.10008.1.2.4.80", "python-gdcm")
    assert "pylibjpeg-libjpeg" not in error.message  # never recommend the GPL decoder


def test_jpeg_ls_uses_gdcm_without_pyjpegls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = write(tmp_path / "plain.dcm", dataset())
    jls = transcode(plain, tmp_path / "jls.dcm", gdcm.TransferSyntax.JPEGLSLossless)
    assert read_image(jls).decoder == "pyjpegls"  # CharLS raises on damaged data; GDCM may abort instead
    only_gdcm = SimpleNamespace(is_available=True, available_plugins=("gdcm",), missing_dependencies=[])
    monkeypatch.setattr(dicom, "get_decoder", lambda uid: only_gdcm)
    result = read_image(jls)
    assert result.decoder == "gdcm" and np.array_equal(result.pixels, read_image(plain).pixels)


def _jpeg(tmp: Path, syntax: int) -> bytearray:
    return bytearray(transcode(write(tmp / "plain.dcm", dataset()), tmp / "j.dcm", syntax).read_bytes())


def test_damaged_jpeg_headers_never_reach_gdcm(tmp_path: Path) -> None:
    """Cases found by fuzzing on which GDCM aborts or crashes the whole process instead of raising."""
    data = _jpeg(tmp_path, gdcm.TransferSyntax.JPEGLosslessProcess14_1)
    sof = data.index(b"\xff\xc3")
    bad_precision, bad_marker = bytearray(data), bytearray(data)
    bad_precision[sof + 4] = 23  # sample precision 23 bits
    bad_marker[data.index(b"\xff\xc4")] = 0x58  # the Huffman table segment loses its marker
    (tmp_path / "p.dcm").write_bytes(bad_precision)
    (tmp_path / "m.dcm").write_bytes(bad_marker)
    expect(tmp_path / "p.dcm", ErrorCode.DECODE_FAILED, "'precision': 23")
    expect(tmp_path / "m.dcm", ErrorCode.DECODE_FAILED, "header")
    ds = pydicom.dcmread(tmp_path / "j.dcm")
    ds.Columns = 16256  # the stream stays 128×128
    expect(write(tmp_path / "c.dcm", ds), ErrorCode.DECODE_FAILED, "128×128", "128×16256")


def test_gdcm_is_not_tried_after_another_decoder_rejected_the_data(tmp_path: Path) -> None:
    data = _jpeg(tmp_path, gdcm.TransferSyntax.JPEGLSLossless)
    sos = data.index(b"\xff\xda")
    data[sos + 20 : sos + 220] = b"\xff" * 200
    (tmp_path / "bad.dcm").write_bytes(data)
    error = expect(tmp_path / "bad.dcm", ErrorCode.DECODE_FAILED, "JPEG-LS", "pyjpegls")
    assert "gdcm" not in error.message


def test_decode_failed(tmp_path: Path) -> None:
    ds = dataset(compression="j2k")
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(200)])  # a J2K start, then garbage
    expect(write(tmp_path / "bad.dcm", ds), ErrorCode.DECODE_FAILED, "JPEG 2000", "1.2.840.10008.1.2.4.90")


def test_too_small(tmp_path: Path) -> None:
    path = write(tmp_path / "small.dcm", dataset(size=64))
    expect(path, ErrorCode.TOO_SMALL, "64×64", "128")
    assert read_image(path, ReadPolicy(min_size=64)).rows == 64


@pytest.mark.parametrize(("keyword", "value"), [("StudyInstanceUID", "1.2.abc"), ("SOPInstanceUID", "")])
def test_invalid_uid(tmp_path: Path, keyword: str, value: str) -> None:
    ds = dataset()
    setattr(ds, keyword, value)
    expect(write(tmp_path / "uid.dcm", ds), ErrorCode.INVALID_UID, f"{keyword}={value!r}")


def test_damage_pydicom_chokes_on_is_decode_failed(tmp_path: Path) -> None:
    data = bytearray(write(tmp_path / "ok.dcm", dataset()).read_bytes())
    slope = data.index(b"\x28\x00\x53\x10DS")  # (0028,1053) RescaleSlope, VR DS
    data[slope + 4 : slope + 6] = b"DZ"
    (tmp_path / "vr.dcm").write_bytes(data)
    # the message names the tag, never the value (issue 14: values may be patient data)
    expect(tmp_path / "vr.dcm", ErrorCode.DECODE_FAILED, "Unknown Value Representation", "(0028,1053)")
    with pytest.raises(ValueError) as info:
        assert UID("1.2.3.4").is_compressed  # raised inside pydicom: not a transfer syntax
    assert unforeseen_error(info.value).code == ErrorCode.DECODE_FAILED


def test_unforeseen_exception_is_internal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(ds: pydicom.Dataset) -> None:
        raise KeyError("boom")

    monkeypatch.setattr(dicom, "_spacing", boom)
    err = expect(write(tmp_path / "ok.dcm", dataset()), ErrorCode.INTERNAL, "KeyError")
    assert "boom" not in err.message  # quoted exception text is withheld: it may quote a header value


def test_too_large_and_degenerate(tmp_path: Path) -> None:
    path = write(tmp_path / "ok.dcm", dataset())
    expect(path, ErrorCode.TOO_LARGE, "128×128", "--max-pixels", policy=ReadPolicy(max_pixels=100 * 100))
    ds = dataset()
    ds.RescaleSlope = 0
    expect(write(tmp_path / "flat.dcm", ds), ErrorCode.DEGENERATE_IMAGE, "constant")


def test_every_read_code_is_exercised() -> None:
    """Guards the list above: a new read-side code needs a case here."""
    source = Path(__file__).read_text()
    later = ("BUNDLE_", "INFERENCE_", "WRITE_", "DUPLICATE_")  # codes of later stages
    read_codes = {code for code in ErrorCode if not code.name.startswith(later)}
    assert {code for code in read_codes if f"ErrorCode.{code.name}," in source} == read_codes


# --- codecs --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("syntax", "uid", "decoder", "tol"),
    [
        (gdcm.TransferSyntax.JPEGLosslessProcess14_1, pydicom.uid.JPEGLosslessSV1, "gdcm", 0.0),
        (gdcm.TransferSyntax.JPEGLosslessProcess14, pydicom.uid.JPEGLossless, "gdcm", 0.0),
        (gdcm.TransferSyntax.JPEGLSLossless, pydicom.uid.JPEGLSLossless, "pyjpegls", 0.0),
        (gdcm.TransferSyntax.JPEGBaselineProcess1, pydicom.uid.JPEGBaseline8Bit, "pillow", 0.02),
    ],
    ids=["jpeg-lossless-sv1", "jpeg-lossless", "jpeg-ls", "jpeg-baseline"],
)
def test_monochrome_jpeg_family(tmp_path: Path, syntax: int, uid: str, decoder: str, tol: float) -> None:
    """pydicom bundles no monochrome JPEG lossless / baseline file: GDCM transcodes a CR into each."""
    ds = dataset()
    if uid == pydicom.uid.JPEGBaseline8Bit:  # baseline is 8-bit only
        stored = np.frombuffer(ds.PixelData, "<u2").reshape(128, 128) >> 4
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.WindowCenter, ds.WindowWidth, ds.PixelData = 128, 256, stored.astype(np.uint8).tobytes()
        ds["PixelData"].VR = "OB"
    plain = write(tmp_path / "plain.dcm", ds)
    result = read_image(transcode(plain, tmp_path / "jpeg.dcm", syntax))
    assert (result.transfer_syntax, result.decoder) == (uid, decoder)
    assert float(np.abs(result.pixels - read_image(plain).pixels).max()) <= tol


@pytest.mark.parametrize("syntax", [pydicom.uid.HTJ2KLossless, pydicom.uid.HTJ2KLosslessRPCL])
def test_htj2k_from_an_independent_encoder(tmp_path: Path, syntax: str) -> None:
    """HTJ2K codestreams made by OpenJPH's ojph_compress (Debian openjph-tools), not by our code."""
    encoder = shutil.which("ojph_compress")
    if encoder is None:
        message = "ojph_compress not found; install the Debian package openjph-tools"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    ds = dataset()
    stored = np.frombuffer(ds.PixelData, "<u2").reshape(128, 128)
    pgm = tmp_path / "in.pgm"
    pgm.write_bytes(b"P5 128 128 4095\n" + stored.astype(">u2").tobytes())  # 16-bit PGM is big endian
    order = "RPCL" if syntax == pydicom.uid.HTJ2KLosslessRPCL else "LRCP"
    subprocess.run([encoder, "-i", str(pgm), "-o", str(tmp_path / "out.j2c"), "-reversible", "true",
                    "-prog_order", order], check=True, capture_output=True)
    ds.PixelData = pydicom.encaps.encapsulate([(tmp_path / "out.j2c").read_bytes()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = syntax
    plain = write(tmp_path / "plain.dcm", dataset())
    result = read_image(write(tmp_path / "htj2k.dcm", ds))
    assert (result.transfer_syntax, result.decoder) == (syntax, "pylibjpeg")
    assert np.array_equal(result.pixels, read_image(plain).pixels)


# --- every file bundled with pydicom -------------------------------------------------------------------

# get_testdata_files() would also fetch the pydicom-data files over the network: list the package dir.
BUNDLED = Path(DATA_ROOT) / "test_files"
FILES = sorted(p for p in BUNDLED.rglob("*") if p.is_file())
# Lossless or re-encoded copies of MR_small.dcm: each codec / encoding must give identical pixels.
SAME_AS_MR_SMALL = [f"MR_small_{v}.dcm" for v in ("RLE", "jp2klossless", "jpeg_ls_lossless", "bigendian")]
SAME_AS_MR_SMALL += ["MR_small_expb.dcm", "MR_small_implicit.dcm", "MR_small_padded.dcm"]
DECODE = {  # file → decoding plugin, under ReadPolicy(any_modality=True, min_size=1)
    "693_J2KI.dcm": "pylibjpeg",  # JPEG 2000 lossy, signed
    "J2K_pixelrep_mismatch.dcm": "pylibjpeg",
    "JPEG2000.dcm": "pylibjpeg",
    "MR_small_jp2klossless.dcm": "pylibjpeg",
    "MR_small_jpeg_ls_lossless.dcm": "pyjpegls",  # CharLS; GDCM where pyjpegls is not installed
    "MR_small_RLE.dcm": "pylibjpeg",  # pylibjpeg-rle
    "rtdose_rle_1frame.dcm": "pylibjpeg",
    "image_dfl.dcm": "native",  # deflated explicit VR little endian
    "CT_small.dcm": "native",
    "dicomdirtests/77654033/CR1/6154": "native",
}
FAIL = {  # file → code, same policy
    "JPEG-lossy.dcm": ErrorCode.MISSING_CODEC,  # 12-bit JPEG Extended: GPL pylibjpeg-libjpeg only
    "JPGExtended.dcm": ErrorCode.MISSING_CODEC,
    "MR_truncated.dcm": ErrorCode.TRUNCATED,
    "rtplan_truncated.dcm": ErrorCode.TRUNCATED,
    # its damaged SIZ declares 1024 × 3722445056 pixels: refused before any decoder sees it
    "JPEG2000-embedded-sequence-delimiter.dcm": ErrorCode.TOO_LARGE,
    "badVR.dcm": ErrorCode.DECODE_FAILED,  # NumberOfFrames '1A'
    "rtdose.dcm": ErrorCode.MULTI_FRAME,
    "SC_rgb_jpeg_gdcm.dcm": ErrorCode.UNSUPPORTED_PHOTOMETRIC,
    "examples_palette.dcm": ErrorCode.UNSUPPORTED_PHOTOMETRIC,
    "JPEGLSNearLossless_08.dcm": ErrorCode.INVALID_UID,  # no StudyInstanceUID
    "ExplVR_LitEndNoMeta.dcm": ErrorCode.NO_PIXEL_DATA,  # read without file meta: an RT Ion Plan
    "reportsi.dcm": ErrorCode.NO_PIXEL_DATA,
    "dicomdirtests/DICOMDIR": ErrorCode.NO_PIXEL_DATA,
    "README.txt": ErrorCode.NOT_DICOM,
    "zipMR.gz": ErrorCode.NOT_DICOM,
    "liver_1frame.dcm": ErrorCode.DEGENERATE_IMAGE,  # 1 bit allocated: a two-level (binary) image
}


def _sweep(policy: ReadPolicy) -> dict[str, DicomImage | TriageError]:
    outcomes: dict[str, DicomImage | TriageError] = {}
    for path in FILES:
        try:
            result: DicomImage | TriageError = read_image(path, policy)
        except TriageError as exc:  # anything else fails the test
            result = exc
        outcomes[path.relative_to(BUNDLED).as_posix()] = result
    return outcomes


@pytest.fixture(autouse=True)
def _quiet_pydicom(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="pydicom")  # it logs each failing plugin's traceback


def test_every_bundled_file_any_modality() -> None:
    assert len(FILES) > 100, f"pydicom's bundled test files not found under {BUNDLED}"
    outcomes = _sweep(LENIENT_POLICY)
    for name, result in outcomes.items():
        if isinstance(result, DicomImage):
            pixels = result.pixels
            assert pixels.dtype == np.float32 and pixels.ndim == 2 and "PixelData" not in result.dataset, name
            assert np.isfinite(pixels).all() and pixels.min() >= 0.0 and pixels.max() <= 1.0, name
    decoded = {n: r.decoder for n, r in outcomes.items() if isinstance(r, DicomImage)}
    assert {n: decoded.get(n) for n in DECODE} == DECODE
    failed = {n: r.code for n, r in outcomes.items() if isinstance(r, TriageError)}
    assert {n: failed.get(n) for n in FAIL} == FAIL
    assert all(code == ErrorCode.UNSUPPORTED_PHOTOMETRIC for n, code in failed.items() if "SC_rgb" in n)
    reference = outcomes["MR_small.dcm"]
    assert isinstance(reference, DicomImage)
    for name in SAME_AS_MR_SMALL:
        other = outcomes[name]
        assert isinstance(other, DicomImage) and np.array_equal(other.pixels, reference.pixels), name


def test_every_bundled_file_default_policy() -> None:
    outcomes = _sweep(ReadPolicy())
    assert not [n for n, r in outcomes.items() if isinstance(r, DicomImage)]  # no chest radiograph there
    codes = {n: r.code for n, r in outcomes.items() if isinstance(r, TriageError)}
    assert codes["CT_small.dcm"] == ErrorCode.UNSUPPORTED_MODALITY
    assert codes["dicomdirtests/77654033/CR1/6154"] == ErrorCode.TOO_SMALL  # a 16×16 CR
    assert codes["MR_truncated.dcm"] == ErrorCode.TRUNCATED and codes["README.txt"] == ErrorCode.NOT_DICOM
