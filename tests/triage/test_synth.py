"""`triage synth`: the phantom's ground truth, its DICOM files and its SIIM-ACR label file."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from scipy.ndimage import binary_dilation, binary_erosion
from typer.testing import CliRunner

from triage.cli.main import app
from triage.io.dicom import read_dicom
from triage.synth.anatomy import Habitus
from triage.synth.case import sample_case
from triage.synth.config import PhantomConfig
from triage.synth.dataset import SynthRequest, read_metadata, synthesize
from triage.synth.lesions import STRATUM_RANGES
from triage.synth.render import render

runner = CliRunner()


def kaggle_rle2mask(rle: str, width: int, height: int) -> np.ndarray:
    """The competition's own decoder (mask_functions.py), rewritten independently of triage.data.rle."""
    mask = np.zeros(width * height, dtype=np.uint8)
    values = [int(v) for v in rle.split()]
    position = 0
    for start, length in zip(values[0::2], values[1::2], strict=True):
        position += start
        mask[position : position + length] = 255
        position += length
    return mask.reshape(width, height).T


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "set"
    synthesize(SynthRequest(out, studies=24, positive_fraction=0.5, size=256, seed=3), workers=2)
    return out


def _labels(root: Path) -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    lines = (root / "train-rle.csv").read_text().splitlines()
    assert lines[0] == "ImageId, EncodedPixels"  # the stage-1 header, leading space included
    for line in lines[1:]:
        image_id, rle = line.split(",", 1)
        assert rle.startswith(" ")
        rows.setdefault(image_id, []).append(rle.strip())
    return rows


def test_independent_decoder_reproduces_masks(dataset: Path) -> None:
    labels = _labels(dataset)
    rows = read_metadata(dataset)
    assert set(labels) == {r["image_id"] for r in rows}
    for row in rows:
        truth = np.asarray(Image.open(dataset / row["mask"])) > 0
        decoded = np.zeros_like(truth)
        for rle in labels[row["image_id"]]:
            if rle != "-1":
                decoded |= kaggle_rle2mask(rle, truth.shape[1], truth.shape[0]) > 0
        np.testing.assert_array_equal(decoded, truth)
        assert (labels[row["image_id"]] == ["-1"]) == (row["label"] == "0")
        assert int(row["area_px"]) == int(truth.sum())


def test_labels_patients_and_strata(dataset: Path) -> None:
    rows = read_metadata(dataset)
    assert sum(r["label"] == "1" for r in rows) == 12  # exactly round(24 * 0.5)
    for r in rows:
        if r["label"] == "1":
            lo, hi = STRATUM_RANGES[r["size_stratum"]]  # type: ignore[index]
            assert lo <= float(r["area_fraction"]) < hi or r["size_stratum"] == "large"
            assert r["side"] in ("left", "right")
        else:
            assert r["size_stratum"] == "none" and float(r["area_fraction"]) == 0
    patients = {r["patient_id"] for r in rows}
    assert 8 <= len(patients) < 24  # some patients have follow-up studies


def test_pneumothorax_inside_lung_fields(dataset: Path) -> None:
    for r in read_metadata(dataset):
        if r["label"] == "1":
            ptx = np.asarray(Image.open(dataset / r["mask"])) > 0
            lungs = np.asarray(Image.open(dataset / r["lungs"])) > 0
            assert (ptx & ~lungs).sum() <= 0.02 * ptx.sum()
            heat = np.asarray(Image.open(dataset / r["heatmap"]))
            ys, xs = np.nonzero(ptx)
            assert heat[int(ys.mean()), int(xs.mean())] > 128  # the reader looks at the lesion


def test_dicom_attributes(dataset: Path) -> None:
    rows = read_metadata(dataset)
    seen_photometric = set()
    for r in rows:
        ds = pydicom.dcmread(dataset / r["dicom"])
        assert ds.SOPInstanceUID == r["image_id"] and ds.StudyInstanceUID == r["study_uid"]
        assert ds.SOPClassUID in (
            pydicom.uid.ComputedRadiographyImageStorage,
            pydicom.uid.DigitalXRayImageStorageForPresentation,
        )
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (16, 12, 11)
        assert int(ds.pixel_array.max()) <= 4095
        assert ds.ViewPosition == r["view"] and ds.Modality == r["modality"]
        assert len(ds.ImagerPixelSpacing) == 2
        assert str(ds.PatientName).startswith("SYNTHETIC^") and not ds.get("PatientBirthDate")
        assert ds.PatientIdentityRemoved == "YES"
        seen_photometric.add(ds.PhotometricInterpretation)
        # The product's reader shows lungs darker than the mediastinum, whatever the photometric.
        img = read_dicom(dataset / r["dicom"]).pixels
        lungs = np.asarray(Image.open(dataset / r["lungs"])) > 0
        centre = img[: img.shape[0] // 2, img.shape[1] // 2 - 4 : img.shape[1] // 2 + 4]
        assert img[lungs].mean() < centre.mean() - 0.1
    assert seen_photometric == {"MONOCHROME1", "MONOCHROME2"}


def test_same_seed_same_bytes_any_worker_count(tmp_path: Path) -> None:
    def digest(root: Path) -> dict[str, str]:
        return {
            p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }

    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    synthesize(SynthRequest(a, studies=5, size=128, seed=11), workers=1)
    synthesize(SynthRequest(b, studies=5, size=128, seed=11), workers=2)
    synthesize(SynthRequest(c, studies=5, size=128, seed=12), workers=1)
    assert digest(a) == digest(b)
    assert (a / "train-rle.csv").read_text() != (c / "train-rle.csv").read_text()


def _case(label: bool, seed: int, config: PhantomConfig | None = None):  # type: ignore[no-untyped-def]
    cfg = config or PhantomConfig()
    return sample_case(
        cfg, Habitus.sample(np.random.default_rng(seed)), label, np.random.default_rng([99, seed])
    )


def test_pneumothorax_is_lucent_without_markings_and_has_a_pleural_line() -> None:
    quiet = PhantomConfig(noise=0.0, size_weights=(0.0, 0.0, 1.0))
    for seed in range(3):
        case = _case(True, seed, quiet)
        with_ptx = render(case, 512)
        without = render(dataclasses.replace(case, pneumothorax=None), 512)
        region = with_ptx.pneumothorax
        # Air without lung: darker than the lung that was there, and without its markings.
        assert with_ptx.image[region].mean() < without.image[region].mean() - 0.02
        # Lung markings: what they add to the image is zero inside the pneumothorax, not in the lung.
        plain = render(dataclasses.replace(case, config=dataclasses.replace(quiet, marking_density=0.0)), 512)
        markings = np.abs(with_ptx.image - plain.image)
        core = binary_erosion(region, iterations=3)
        open_lung = with_ptx.lungs & ~binary_dilation(region, iterations=3)
        assert markings[core].mean() < 0.1 * markings[open_lung].mean()
        # The visceral pleural line: a thin bright line along the collapsed lung's edge.
        no_line = render(
            dataclasses.replace(case, config=dataclasses.replace(quiet, pleural_line_contrast=0.0)), 512
        )
        line = np.round(case.pneumothorax.pleural_line * 512 - 0.5).astype(int)
        inside = (line >= 0).all(axis=1) & (line < 512).all(axis=1)
        ys, xs = line[inside, 1], line[inside, 0]
        assert (with_ptx.image[ys, xs] - no_line.image[ys, xs]).mean() > 0.03
        assert np.abs(with_ptx.image - no_line.image)[core].mean() < 0.005


def test_drain_is_a_label_conditioned_confounder() -> None:
    pos = np.mean([_case(True, s).drain is not None for s in range(300)])
    neg = np.mean([_case(False, s).drain is not None for s in range(300)])
    assert 0.50 < pos < 0.70 and neg < 0.10
    cfg = PhantomConfig(drain_given_positive=0.0, drain_given_negative=1.0)
    assert all(_case(False, s, cfg).drain is not None for s in range(20))
    assert all(_case(True, s, cfg).drain is None for s in range(20))


def test_corner_marker_is_an_opt_in_confounder_outside_the_lungs_with_its_mask(tmp_path: Path) -> None:
    off = [_case(True, s) for s in range(30)]
    assert all(c.corner_marker is None for c in off)
    cfg = PhantomConfig(corner_marker_given_positive=0.9, corner_marker_given_negative=0.1)
    pos = np.mean([_case(True, s, cfg).corner_marker is not None for s in range(300)])
    neg = np.mean([_case(False, s, cfg).corner_marker is not None for s in range(300)])
    assert 0.85 < pos < 0.95 and 0.05 < neg < 0.15
    # the option draws last: every other part of a case is what it was without it
    on, plain = _case(True, 4, cfg), _case(True, 4)
    assert on.render_seed == plain.render_seed and on.exposure == plain.exposure
    with_marker = next(c for c in (_case(True, s, cfg) for s in range(20)) if c.corner_marker is not None)
    r = render(with_marker, 128)
    assert r.corner_marker is not None and r.corner_marker.sum() > 20
    assert not (r.corner_marker & r.lungs).any(), "the marker must lie entirely outside the lungs"
    assert (
        r.image[r.corner_marker].mean()
        > r.image[binary_dilation(r.corner_marker, iterations=4) & ~r.corner_marker].mean() + 0.2
    )
    out = tmp_path / "marked"
    synthesize(
        SynthRequest(
            out,
            studies=6,
            positive_fraction=0.5,
            size=128,
            seed=5,
            config=PhantomConfig(corner_marker_given_positive=1.0),
        ),
        workers=1,
    )
    rows = read_metadata(out)
    for row in rows:
        assert (row["corner_marker"] == "1") == (row["label"] == "1")
        assert bool(row["corner_marker_mask"]) == (row["label"] == "1")
        if row["corner_marker_mask"]:
            assert np.asarray(Image.open(out / row["corner_marker_mask"])).max() == 255


def test_size_strata_span_small_to_large() -> None:
    areas = [_case(True, s).pneumothorax.area_fraction for s in range(200)]  # type: ignore[union-attr]
    assert min(areas) < 0.005 and max(areas) > 0.02
    assert 0.2 < np.mean(np.asarray(areas) < 0.005) < 0.5  # the hard stratum is well represented


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--studies", "-3"], "Invalid value for '--studies': Input should be greater than or equal to 1"),
        (["--positive-fraction", "1.5"], "'--positive-fraction': Input should be less than or equal to 1"),
        (["--size", "64"], "'--size': Input should be greater than or equal to 128"),
        (["--compression", "zip"], "'zip' is not one of 'none', 'rle', 'j2k'"),
        (["--noise", "-1"], "noise must be in [0.0, 0.5], got -1.0"),
    ],
)
def test_cli_refuses_nonsense_with_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    result = runner.invoke(app, ["synth", str(tmp_path / "x"), *args])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("triage synth: error:")
    assert not (tmp_path / "x").exists()


def test_cli_writes_set_and_contact_sheet_and_protects_foreign_folders(tmp_path: Path) -> None:
    out, sheet = tmp_path / "set", tmp_path / "sheet.png"
    args = ["synth", str(out), "--studies", "6", "--size", "128", "--workers", "1"]
    result = runner.invoke(app, [*args, "--contact-sheet", str(sheet)])
    assert result.exit_code == 0, result.output
    assert Image.open(sheet).size[0] >= 4 * 320
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "not empty" in again.stderr
    assert runner.invoke(app, [*args, "--force"]).exit_code == 0
    foreign = tmp_path / "patients"
    foreign.mkdir()
    (foreign / "keep.dcm").write_bytes(b"x")
    refused = runner.invoke(app, ["synth", str(foreign), "--studies", "2", "--size", "128", "--force"])
    assert refused.exit_code == 2 and (foreign / "keep.dcm").exists()


@pytest.mark.parametrize("compression", ["none", "rle", "j2k"])
def test_every_dicom_reads_with_dcmdump(tmp_path: Path, compression: str) -> None:
    if shutil.which("dcmdump") is None:
        if os.environ.get("CI"):
            pytest.fail("dcmdump (Debian package dcmtk) is missing in CI")
        pytest.skip("dcmdump not installed (apt-get install dcmtk)")
    out = tmp_path / compression
    synthesize(
        SynthRequest(out, studies=6, size=128, seed=5, config=PhantomConfig(compression=compression)),
        workers=1,
    )  # type: ignore[arg-type]
    files = sorted(out.rglob("*.dcm"))
    assert len(files) == 6
    proc = subprocess.run(
        ["dcmdump", "-E", "-dc", *map(str, files)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert not [ln for ln in proc.stderr.splitlines() if ln[:2] in ("E:", "W:", "F:")], proc.stderr
    for f in files:
        assert read_dicom(f).pixels.shape == (128, 128)


def test_folds_command_splits_by_patient(dataset: Path, tmp_path: Path) -> None:
    target = tmp_path / "folds.csv"
    result = runner.invoke(app, ["folds", str(dataset), "--folds", "3", "--out", str(target)])
    assert result.exit_code == 0, result.output
    lines = target.read_text().splitlines()
    assert lines[0] == "image_id,patient_id,label,fold"
    fold_of_patient: dict[str, set[str]] = {}
    for line in lines[1:]:
        _, patient, _, fold = line.split(",")
        fold_of_patient.setdefault(patient, set()).add(fold)
    assert len(lines) - 1 == 24 and all(len(f) == 1 for f in fold_of_patient.values())
    assert {f for folds in fold_of_patient.values() for f in folds} == {"0", "1", "2"}
