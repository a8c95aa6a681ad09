"""SEG, SC and SR outputs: highdicom read-back, references, determinism, dciodvfy and dcmdump."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from triage.errors import ErrorCode, TriageError
from triage.outputs.dicom_objects import SERIES_NUMBER, BundleInfo
from triage.outputs.sc import write_sc
from triage.outputs.seg import write_seg
from triage.outputs.sr import write_sr
from triage.synth.dicom_writer import Acquisition, Identity, Modality, Photometric, build_dataset

SIZE = 256
BUNDLE = BundleInfo(name="ptx-test-bundle", version="1.2.3", content_hash="0123456789abcdef" * 4)
VARIANTS: list[tuple[Modality, Photometric]] = list(
    itertools.product(("CR", "DX"), ("MONOCHROME1", "MONOCHROME2"))
)


def source(
    modality: Modality = "DX", photometric: Photometric = "MONOCHROME2", n: int = 1
) -> pydicom.Dataset:
    """A synthetic SIZE x SIZE radiograph (gradient + disk) with deterministic identity."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / (SIZE - 1)
    display = 0.2 + 0.5 * xx * yy
    display[(yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.1] = 0.9
    root = "1.2.826.0.1.3680043.8.498.777"
    ident = Identity(
        patient_id=f"SYN{n:04d}",
        patient_name="SYNTHETIC^OUTPUTS",
        patient_sex="O",
        patient_age_years=50,
        study_uid=f"{root}.1.{n}",
        series_uid=f"{root}.2.{n}",
        sop_uid=f"{root}.3.{n}",
        study_date="20240305",
        study_time="083000",
        accession_number=f"ACC{n:04d}",
    )
    acq = Acquisition(modality=modality, photometric=photometric, view="PA", pixel_spacing_mm=0.5)
    return build_dataset(display, acq, ident)


def mask() -> np.ndarray:
    m = np.zeros((SIZE, SIZE), dtype=bool)
    m[20:90, 150:230] = True
    m[100:104, 10:12] = True
    return m


def overlay() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(200, 240, 3), dtype=np.uint8)


def write_all(src: pydicom.Dataset, folder: Path, *, empty: bool = False) -> dict[str, Path]:
    paths = {kind: folder / f"{kind}.dcm" for kind in ("seg", "sc", "sr")}
    m = np.zeros((SIZE, SIZE), dtype=bool) if empty else mask()
    write_seg(src, m, paths["seg"], bundle=BUNDLE)
    write_sc(src, overlay(), paths["sc"], bundle=BUNDLE)
    area = None if empty else float(m.sum()) * 0.25
    write_sr(src, probability=0.93, positive=not empty, mask_area_mm2=area, path=paths["sr"], bundle=BUNDLE)
    return paths


def require_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"{name} not found; install the Debian package {package} (apt-get install {package})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """{variant: {kind: path}} for every modality x photometric, plus an empty-mask (negative) case."""
    out: dict[str, dict[str, Path]] = {}
    for modality, photometric in VARIANTS:
        name = f"{modality}-{photometric}"
        out[name] = write_all(source(modality, photometric), tmp_path_factory.mktemp(name))
    out["negative"] = write_all(source(), tmp_path_factory.mktemp("negative"), empty=True)
    return out


def assert_same_patient_and_study(ds: pydicom.Dataset, src: pydicom.Dataset) -> None:
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "AccessionNumber", "StudyDate"):
        assert ds.get(keyword) == src.get(keyword), keyword
    assert ds.SeriesInstanceUID != src.SeriesInstanceUID
    assert ds.Manufacturer == "triage" and ds.ManufacturerModelName == BUNDLE.name
    assert list(ds.SoftwareVersions) == ["triage 0.1.0", "ptx-test-bundle 1.2.3"]


@pytest.mark.parametrize(("modality", "photometric"), VARIANTS)
def test_seg_reads_back_with_the_mask(
    written: dict[str, dict[str, Path]], modality: Modality, photometric: Photometric
) -> None:
    src = source(modality, photometric)
    seg = hd.seg.segread(written[f"{modality}-{photometric}"]["seg"])
    assert_same_patient_and_study(seg, src)
    assert seg.get_source_image_uids() == [(src.StudyInstanceUID, src.SeriesInstanceUID, src.SOPInstanceUID)]
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[src.SOPInstanceUID], segment_numbers=[1]
    )
    assert pixels.shape == (1, SIZE, SIZE, 1)
    np.testing.assert_array_equal(pixels[0, :, :, 0].astype(bool), mask())
    description = seg.get_segment_description(1)
    assert description.segmented_property_type == codes.SCT.Pneumothorax
    assert description.segmented_property_category == codes.cid7150.MorphologicallyAbnormalStructure
    assert seg.SegmentationType == "BINARY" and seg.SeriesNumber == SERIES_NUMBER["seg"]
    assert seg.SeriesDescription == "triage PTX SEG"
    assert "FrameOfReferenceUID" not in seg and list(seg.PatientOrientation) == ["L", "F"]


def test_empty_mask_gives_a_valid_all_zero_seg(written: dict[str, dict[str, Path]]) -> None:
    seg = hd.seg.segread(written["negative"]["seg"])
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[source().SOPInstanceUID], segment_numbers=[1]
    )
    assert pixels.shape == (1, SIZE, SIZE, 1) and not pixels.any()


@pytest.mark.parametrize(("modality", "photometric"), VARIANTS)
def test_sc_reads_back_with_the_overlay(
    written: dict[str, dict[str, Path]], modality: Modality, photometric: Photometric
) -> None:
    src = source(modality, photometric)
    sc = hd.imread(written[f"{modality}-{photometric}"]["sc"])
    assert_same_patient_and_study(sc, src)
    np.testing.assert_array_equal(sc.pixel_array, overlay())
    assert sc.PhotometricInterpretation == "RGB" and sc.BurnedInAnnotation == "YES"
    assert list(sc.PatientOrientation) == list(src.PatientOrientation)
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID


def test_sc_orientation_is_derived_from_the_view_when_missing(tmp_path: Path) -> None:
    src = source()
    del src.PatientOrientation
    src.ViewPosition = "AP"
    write_sc(src, overlay(), tmp_path / "sc.dcm", bundle=BUNDLE)
    assert list(pydicom.dcmread(tmp_path / "sc.dcm").PatientOrientation) == ["R", "F"]


def test_sc_keeps_a_compound_source_orientation(tmp_path: Path) -> None:
    src = source()
    src.PatientOrientation = ["L", "PF"]  # valid (PS3.3 C.7.6.1.1.1); highdicom's enum takes single letters
    write_sc(src, overlay(), tmp_path / "sc.dcm", bundle=BUNDLE)
    assert list(pydicom.dcmread(tmp_path / "sc.dcm").PatientOrientation) == ["L", "PF"]


@pytest.mark.parametrize("variant", [*(f"{m}-{p}" for m, p in VARIANTS), "negative"])
def test_sr_reads_back_with_the_finding(written: dict[str, dict[str, Path]], variant: str) -> None:
    modality, photometric = ("DX", "MONOCHROME2") if variant == "negative" else variant.split("-")
    src = source(modality, photometric)  # type: ignore[arg-type]
    sr = hd.sr.srread(written[variant]["sr"])
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    assert_same_patient_and_study(sr, src)
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    (group,) = sr.content.get_image_measurement_groups()
    assert group.finding_type == codes.SCT.Pneumothorax
    assert group.source_images[0].referenced_sop_instance_uid == src.SOPInstanceUID
    values = {m.name.meaning: (m.value, m.unit.value) for m in group.get_measurements()}
    assert values["Probability"] == (pytest.approx(0.93), "1")
    (evaluation,) = group.get_qualitative_evaluations()
    assert evaluation.name == codes.SCT.Pneumothorax
    if variant == "negative":
        assert evaluation.value == codes.SCT.Absent and "Area" not in values
    else:
        assert evaluation.value == codes.SCT.Present
        assert values["Area"] == (pytest.approx(mask().sum() * 0.25), "mm2")


def test_outputs_are_deterministic(tmp_path: Path) -> None:
    first, second = write_all(source(), tmp_path / "a"), write_all(source(), tmp_path / "b")
    uids = set()
    for kind in ("seg", "sc", "sr"):
        assert first[kind].read_bytes() == second[kind].read_bytes(), kind
        uids.add(pydicom.dcmread(first[kind]).SOPInstanceUID)
    assert len(uids) == 3
    other = BundleInfo(BUNDLE.name, BUNDLE.version, "f" * 64)
    path = tmp_path / "other.dcm"
    assert write_seg(source(), mask(), path, bundle=other) not in uids


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_invalid_source_uid_is_rejected(tmp_path: Path) -> None:
    src = source()
    src.SOPInstanceUID = "1.2.3/../../x"
    with pytest.raises(TriageError) as info:
        write_seg(src, mask(), tmp_path / "seg.dcm", bundle=BUNDLE)
    assert info.value.code == ErrorCode.INVALID_UID and "1.2.3/../../x" in info.value.message
    assert not list(tmp_path.iterdir())


def test_bad_inputs_name_the_value(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"probability=1\.5"):
        write_sr(
            source(), probability=1.5, positive=True, mask_area_mm2=None, path=tmp_path / "x", bundle=BUNDLE
        )
    with pytest.raises(ValueError, match=r"\(10, 10\)"):
        write_seg(source(), np.zeros((10, 10), bool), tmp_path / "x", bundle=BUNDLE)
    with pytest.raises(ValueError, match="content_hash=''"):
        BundleInfo("b", "1", "")


def test_dciodvfy_reports_no_errors(written: dict[str, dict[str, Path]]) -> None:
    dciodvfy = require_tool("dciodvfy", "dicom3tools")
    failures = []
    for variant, paths in written.items():
        for kind, path in paths.items():
            proc = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, check=False)
            lines = (proc.stdout + proc.stderr).splitlines()
            errors = [line for line in lines if line.startswith("Error")]
            if errors:
                warnings = [line for line in lines if line.startswith("Warning")]
                failures.append(f"{variant}/{kind}: errors={errors} warnings={warnings}")
    assert not failures, "\n".join(failures)


def test_dcmdump_reads_every_output(written: dict[str, dict[str, Path]]) -> None:
    dcmdump = require_tool("dcmdump", "dcmtk")
    for variant, paths in written.items():
        for kind, path in paths.items():
            proc = subprocess.run(
                [dcmdump, "-E", "-dc", str(path)], capture_output=True, text=True, check=False
            )
            problems = [line for line in proc.stderr.splitlines() if line.startswith(("E:", "F:"))]
            assert proc.returncode == 0 and not problems, f"{variant}/{kind}: rc={proc.returncode} {problems}"
            assert "(0020,000d) UI [1.2.826.0.1.3680043.8.498.777.1." in proc.stdout, f"{variant}/{kind}"
