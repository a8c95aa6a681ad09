"""Round trips through triage.synth.dicom_writer and triage.io.dicom, plus dcmdump conformance."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from triage.errors import ErrorCode, TriageError
from triage.io.dicom import read_dicom, read_image, to_display
from triage.synth import dicom_writer
from triage.synth.dicom_writer import (
    Acquisition,
    Compression,
    EncoderUnavailableError,
    Identity,
    Modality,
    Photometric,
    build_dataset,
    write_dataset,
)

SIZE = 128
TOL = 1.0 / 4095 + 1e-6  # half a stored step after rounding, with margin; window range normalised to 1
MODALITIES: tuple[Modality, ...] = ("CR", "DX")
PHOTOMETRICS: tuple[Photometric, ...] = ("MONOCHROME1", "MONOCHROME2")
COMPRESSIONS: tuple[Compression, ...] = ("none", "rle", "j2k")
RESCALES = ((1.0, 0.0), (0.5, 100.0), (2.0, -1024.0))
CASES = list(itertools.product(MODALITIES, PHOTOMETRICS, COMPRESSIONS, RESCALES))
EXPECTED_TS = {"none": ExplicitVRLittleEndian, "rle": RLELossless, "j2k": JPEG2000Lossless}


def _case_id(case: tuple[str, str, str, tuple[float, float]]) -> str:
    modality, photometric, compression, (slope, intercept) = case
    return f"{modality}-{photometric}-{compression}-s{slope:g}i{intercept:g}"


def phantom() -> np.ndarray:
    """float32 (SIZE, SIZE) in [0, 1]: a diagonal gradient, a bright disk, a black box, exact 0 and 1."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / (SIZE - 1)
    img = 0.15 + 0.6 * (0.5 * xx + 0.5 * yy)
    img[(yy - 0.35) ** 2 + (xx - 0.6) ** 2 < 0.15**2] = 0.93
    img[80:100, 10:40] = 0.0
    img[5:10, 100:120] = 1.0
    out: np.ndarray = img.astype(np.float32)
    return out


def identity(n: int = 1) -> Identity:
    root = "1.2.826.0.1.3680043.8.498.424242"
    return Identity(
        patient_id=f"SYN{n:05d}",
        patient_name="SYNTHETIC^PHANTOM",
        patient_sex="O",
        patient_age_years=45,
        study_uid=f"{root}.1.{n}",
        series_uid=f"{root}.2.{n}",
        sop_uid=f"{root}.3.{n}",
        study_date="20240102",
        study_time="101500",
        accession_number=f"ACC{n:05d}",
    )


def acquisition(case: tuple[Modality, Photometric, Compression, tuple[float, float]]) -> Acquisition:
    modality, photometric, compression, (slope, intercept) = case
    return Acquisition(
        modality=modality,
        photometric=photometric,
        view="PA",
        pixel_spacing_mm=0.143,
        rescale_slope=slope,
        rescale_intercept=intercept,
        compression=compression,
    )


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every case written once: case id → file path."""
    root = tmp_path_factory.mktemp("dicom")
    image = phantom()
    paths: dict[str, Path] = {}
    for n, case in enumerate(CASES):
        path = root / "nested" / f"{_case_id(case)}.dcm"
        write_dataset(build_dataset(image, acquisition(case), identity(n)), path)
        paths[_case_id(case)] = path
    return paths


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_round_trip(
    case: tuple[Modality, Photometric, Compression, tuple[float, float]], written: dict[str, Path]
) -> None:
    image = phantom()
    path = written[_case_id(case)]
    result = read_dicom(path)
    assert result.pixels.shape == image.shape and result.pixels.dtype == np.float32
    assert float(np.abs(result.pixels - image).max()) <= TOL
    assert result.transfer_syntax == EXPECTED_TS[case[2]]
    assert (result.modality, result.photometric, result.view) == (case[0], case[1], "PA")
    assert result.pixel_spacing_mm == (0.143, 0.143)

    raw = pydicom.dcmread(path).pixel_array.astype(np.int64)
    expected_mono2 = np.rint(image.astype(np.float64) * 4095)
    expected = 4095 - expected_mono2 if case[1] == "MONOCHROME1" else expected_mono2
    assert int(np.abs(raw - expected).max()) <= 1
    if case[1] == "MONOCHROME1":  # bone (display 1) is stored low, air (display 0) high
        assert raw[image == 1.0].max() < raw[image == 0.0].min()


def test_file_attributes(written: dict[str, Path]) -> None:
    for name, path in written.items():
        ds = pydicom.dcmread(path)
        assert ds.preamble == b"\0" * 128
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID, name
        assert ds.SOPClassUID == (
            "1.2.840.10008.5.1.4.1.1.1" if ds.Modality == "CR" else "1.2.840.10008.5.1.4.1.1.1.1"
        )
        assert "PatientBirthDate" in ds and not ds.PatientBirthDate, name
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.DeidentificationMethod == "synthetic phantom; no patient"
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 12, 11, 0)
        assert ds.PresentationLUTShape == (
            "INVERSE" if ds.PhotometricInterpretation == "MONOCHROME1" else "IDENTITY"
        )
        assert ds.BodyPartExamined == "CHEST" and list(ds.PatientOrientation) == ["L", "F"]
        if ds.Modality == "DX":
            assert ds.PresentationIntentType == "FOR PRESENTATION" and ds.RescaleType == "US"


def test_transfer_syntax_uids(written: dict[str, Path]) -> None:
    for name, path in written.items():
        compression = name.split("-")[2]
        assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == EXPECTED_TS[compression], name
    assert RLELossless == "1.2.840.10008.1.2.5" and JPEG2000Lossless == "1.2.840.10008.1.2.4.90"


def test_dcmdump_reads_every_file(written: dict[str, Path]) -> None:
    dcmdump = shutil.which("dcmdump")
    if dcmdump is None:
        message = "dcmdump not found; install the Debian package dcmtk (apt-get install dcmtk)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    for name, path in written.items():
        # -E: stop on error (do not print damaged files); -dc: no silent data correction.
        proc = subprocess.run([dcmdump, "-E", "-dc", str(path)], capture_output=True, text=True, check=False)
        problems = [line for line in proc.stderr.splitlines() if line.startswith(("E:", "W:", "F:"))]
        assert proc.returncode == 0 and not problems, f"{name}: rc={proc.returncode} {problems}"
        assert "(0010,0030) DA (no value available)" in proc.stdout, name


def test_cr_monochrome1_without_presentation_lut_shape(tmp_path: Path) -> None:
    image = phantom()
    acq = Acquisition("CR", "MONOCHROME1", "AP", 0.1, presentation_lut_shape=False)
    path = tmp_path / "cr_mono1.dcm"
    write_dataset(build_dataset(image, acq, identity()), path)
    assert "PresentationLUTShape" not in pydicom.dcmread(path)
    assert float(np.abs(read_dicom(path).pixels - image).max()) <= TOL


def test_monochrome2_with_inverse_presentation_lut_shape_is_inverted() -> None:
    image = phantom()
    ds = build_dataset(image, Acquisition("DX", "MONOCHROME2", "PA", 0.1), identity())
    ds.PresentationLUTShape = "INVERSE"
    assert float(np.abs(to_display(ds) - (1.0 - image)).max()) <= TOL


def test_explicit_window_round_trip_and_out_of_range_window() -> None:
    image = phantom()
    acq = Acquisition("DX", "MONOCHROME1", "PA", 0.1, 1.0, -1000.0, window_center=1000.0, window_width=3000.0)
    ds = build_dataset(image, acq, identity())
    assert float(np.abs(to_display(ds) - image).max()) <= 0.5 / 2999 + 1e-6
    too_wide = Acquisition("DX", "MONOCHROME2", "PA", 0.1, window_center=2048.0, window_width=9000.0)
    with pytest.raises(ValueError, match="9000"):
        build_dataset(image, too_wide, identity())


def test_deterministic_bytes(tmp_path: Path) -> None:
    image = phantom()
    for compression in COMPRESSIONS:
        acq = Acquisition("DX", "MONOCHROME2", "PA", 0.1, compression=compression)
        a, b = tmp_path / f"a_{compression}.dcm", tmp_path / f"b_{compression}.dcm"
        write_dataset(build_dataset(image, acq, identity()), a)
        write_dataset(build_dataset(image, acq, identity()), b)
        assert a.read_bytes() == b.read_bytes(), compression
        assert not list(tmp_path.glob(".*.tmp"))


def test_missing_encoder_names_package(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = SimpleNamespace(available_plugins=(), missing_dependencies=["pylibjpeg-openjpeg"])
    monkeypatch.setattr(dicom_writer, "get_encoder", lambda uid: fake)
    acq = Acquisition("DX", "MONOCHROME2", "PA", 0.1, compression="j2k")
    with pytest.raises(EncoderUnavailableError, match="pylibjpeg-openjpeg"):
        build_dataset(phantom(), acq, identity())


@pytest.mark.parametrize(
    ("keyword", "value", "match"),
    [
        ("PhotometricInterpretation", "RGB", "RGB"),
        ("SamplesPerPixel", 3, "SamplesPerPixel=3"),
        ("NumberOfFrames", 2, "NumberOfFrames=2"),
    ],
)
def test_reader_rejects_non_grayscale_single_frame(keyword: str, value: object, match: str) -> None:
    ds = build_dataset(phantom(), Acquisition("CR", "MONOCHROME2", "PA", 0.1), identity())
    setattr(ds, keyword, value)
    with pytest.raises(ValueError, match=match):
        to_display(ds)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"modality": "MR"},
        {"photometric": "RGB"},
        {"compression": "jpeg"},
        {"rescale_slope": 0.0},
        {"window_center": 100.0},
    ],
)
def test_acquisition_rejects_bad_values(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {
        "modality": "CR",
        "photometric": "MONOCHROME2",
        "view": "PA",
        "pixel_spacing_mm": 0.1,
    }
    with pytest.raises(ValueError, match=re.escape(str(next(iter(kwargs.values()))))):
        Acquisition(**(base | kwargs))  # type: ignore[arg-type]


def test_display_out_of_range_is_rejected() -> None:
    acq = Acquisition("CR", "MONOCHROME2", "PA", 0.1)
    with pytest.raises(ValueError, match=re.escape("1.5")):
        build_dataset(np.full((8, 8), 1.5, np.float32), acq, identity())
    with pytest.raises(ValueError, match="shape"):
        build_dataset(np.zeros((2, 8, 8), np.float32), acq, identity())


def test_independent_decoders_agree(written: dict[str, Path]) -> None:
    """GDCM decodes the J2K files and pydicom's own RLE decoder the RLE files to the same stored values."""
    for name, path in written.items():
        plugin = {"j2k": "gdcm", "rle": "pydicom"}.get(name.split("-")[2])
        if plugin is None:
            continue
        reference = pydicom.dcmread(path).pixel_array
        ds = pydicom.dcmread(path)
        ds.pixel_array_options(decoding_plugin=plugin)
        assert np.array_equal(ds.pixel_array, reference), name


# --- read_image: the display pipeline on messy headers -------------------------------------------------


def _cr(photometric: Photometric = "MONOCHROME2") -> pydicom.Dataset:
    """A 12-bit CR of the phantom; stored values 0..4095, full-range window, slope 1, intercept 0."""
    return build_dataset(phantom(), Acquisition("CR", photometric, "PA", 0.1), identity())


def _read(ds: pydicom.Dataset, tmp_path: Path) -> np.ndarray:
    path = tmp_path / "case.dcm"
    write_dataset(ds, path)
    return read_image(path).pixels


def _stored(ds: pydicom.Dataset) -> np.ndarray:
    return np.frombuffer(ds.PixelData, "<u2").reshape(SIZE, SIZE).astype(np.float64)


@pytest.mark.parametrize("photometric", PHOTOMETRICS)
def test_voi_lut_is_normalised_by_its_data_not_its_declared_bits(
    photometric: Photometric, tmp_path: Path
) -> None:
    """A 12-bit identity VOI LUT declared 16 bits: dividing by 2**16 - 1 would give a black image."""
    ds = _cr(photometric)
    item = pydicom.Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new("LUTData", "OW", np.arange(4096, dtype="<u2").tobytes())
    ds.VOILUTSequence = pydicom.Sequence([item])
    expected = _stored(ds) / 4095
    pixels = _read(ds, tmp_path)
    assert float(np.abs(pixels - (1 - expected if photometric == "MONOCHROME1" else expected)).max()) < 1e-6
    assert float(np.abs(pixels - phantom()).max()) <= TOL


def test_signed_pixels_with_garbage_high_bits(tmp_path: Path) -> None:
    ds = _cr()
    values = np.linspace(-2048, 2047, SIZE * SIZE).round().astype(np.int16).reshape(SIZE, SIZE)
    ds.PixelRepresentation = 1
    ds.PixelData = ((values.view(np.uint16) & 0x0FFF) | 0xA000).astype("<u2").tobytes()  # bits 12-15 junk
    ds.WindowCenter, ds.WindowWidth = 0, 4096  # modality −2048..2047 → 0..1
    expected = (values.astype(np.float64) + 2048 - 0.5) / 4095 + 0.5 / 4095
    assert float(np.abs(_read(ds, tmp_path) - np.clip(expected, 0, 1)).max()) < 1e-3
    del ds.WindowCenter, ds.WindowWidth  # no VOI: min–max of the modality values
    expected = (values - values.min()) / float(values.max() - values.min())
    assert float(np.abs(_read(ds, tmp_path) - expected).max()) < 1e-6


def test_unsigned_garbage_high_bits_are_ignored(tmp_path: Path) -> None:
    ds = _cr()
    clean = _read(ds, tmp_path)
    ds.PixelData = (np.frombuffer(ds.PixelData, "<u2") | 0xF000).astype("<u2").tobytes()
    assert np.array_equal(_read(ds, tmp_path), clean)


def test_first_of_several_windows_is_used(tmp_path: Path) -> None:
    ds = _cr()
    ds.WindowCenter, ds.WindowWidth = 1000, 1500
    single = _read(ds, tmp_path)
    ds.WindowCenter, ds.WindowWidth = [1000, 3000], [1500, 200]
    assert np.array_equal(_read(ds, tmp_path), single)
    assert 0.0 < float(single.mean()) < 1.0


@pytest.mark.parametrize("width", [1, 0, -5])
def test_window_width_up_to_1_falls_back_to_min_max(width: int, tmp_path: Path) -> None:
    ds = _cr()
    ds.WindowWidth = width
    stored = _stored(ds)
    expected = (stored - stored.min()) / (stored.max() - stored.min())
    assert float(np.abs(_read(ds, tmp_path) - expected).max()) < 1e-6


@pytest.mark.parametrize("photometric", PHOTOMETRICS)
def test_constant_image_is_degenerate_and_displays_as_zeros(photometric: Photometric, tmp_path: Path) -> None:
    """read_image refuses it (degenerate_image: nothing to read, issue 14); to_display shows zeros."""
    ds = build_dataset(
        np.full((SIZE, SIZE), 0.4, np.float32), Acquisition("CR", photometric, "PA", 0.1), identity()
    )
    del ds.WindowCenter, ds.WindowWidth
    with pytest.raises(TriageError) as info:
        _read(ds, tmp_path)
    assert info.value.code is ErrorCode.DEGENERATE_IMAGE
    pixels = to_display(pydicom.dcmread(tmp_path / "case.dcm"))
    assert pixels.dtype == np.float32 and not pixels.any()


def test_monochrome1_without_presentation_lut_shape_under_default_policy(tmp_path: Path) -> None:
    acq = Acquisition("CR", "MONOCHROME1", "AP", 0.1, presentation_lut_shape=False)
    assert float(np.abs(_read(build_dataset(phantom(), acq, identity()), tmp_path) - phantom()).max()) <= TOL


def test_header_spacing_and_shape(tmp_path: Path) -> None:
    ds = _cr()
    path = tmp_path / "case.dcm"
    write_dataset(ds, path)
    image = read_image(path)
    assert (image.rows, image.columns, image.decoder) == (SIZE, SIZE, "native")
    assert (image.pixel_spacing_mm, image.spacing_source) == ((0.1, 0.1), "ImagerPixelSpacing")
    assert "PixelData" not in image.dataset and image.dataset.SOPInstanceUID == image.sop_uid
    del ds.ImagerPixelSpacing
    ds.PixelSpacing = [0.2, 0.3]
    write_dataset(ds, path)
    assert (read_image(path).pixel_spacing_mm, read_image(path).spacing_source) == (
        (0.2, 0.3),
        "PixelSpacing",
    )
    del ds.PixelSpacing
    write_dataset(ds, path)
    assert (read_image(path).pixel_spacing_mm, read_image(path).spacing_source) == (None, "none")
