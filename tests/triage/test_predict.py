"""`triage predict` end to end on 200 synthetic studies with a tiny bundle, plus bad inputs mixed in.

One module-scoped batch is shared by most tests: 200 studies at 256 px and one file of each kind of
bad input. The gate threshold is set to the 60th percentile of the classifier's probabilities on the
set, so that about 40% of the images reach the segmenter and the rest do not.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image

from tests.bundles import build_tiny_bundle
from triage.bundle import Bundle, load_bundle, seal
from triage.cascade.items import load_item
from triage.cascade.models import CascadeModels
from triage.cascade.predict import PredictOptions, Predictor
from triage.errors import ErrorCode
from triage.io.dicom import ReadPolicy
from triage.outputs.batch import read_results
from triage.outputs.records import input_digest
from triage.synth.dataset import SynthRequest, synthesize

STUDIES = 200
SIZE = 256
ALL_FORMATS = frozenset({"png", "seg", "sc", "sr", "saliency"})


def _records(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]


def _bad_files(folder: Path, good: Path) -> dict[Path, ErrorCode]:
    """One file per failure kind, each derived from a good synthetic file."""
    folder.mkdir(parents=True)
    bad: dict[Path, ErrorCode] = {}
    (p := folder / "notes.txt").write_text("not an image\n")
    bad[p] = ErrorCode.NOT_DICOM
    data = good.read_bytes()
    (p := folder / "truncated.dcm").write_bytes(data[: len(data) // 2])
    bad[p] = ErrorCode.TRUNCATED
    ds = pydicom.dcmread(good)
    ds.Modality, ds.SOPClassUID = "CT", pydicom.uid.CTImageStorage
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.save_as(p := folder / "ct.dcm")
    bad[p] = ErrorCode.UNSUPPORTED_MODALITY
    ds = pydicom.dcmread(good)
    ds.PatientID = "../../escaped"
    ds.StudyInstanceUID = "../../escaped"
    ds.save_as(p := folder / "evil-uid.dcm")
    bad[p] = ErrorCode.INVALID_UID
    ds = pydicom.dcmread(good)
    del ds.PixelData
    ds.save_as(p := folder / "no-pixels.dcm")
    bad[p] = ErrorCode.NO_PIXEL_DATA
    return bad


def _calibrated_bundle(root: Path, images: list[Path], quantile: float) -> Bundle:
    """A tiny bundle whose gate threshold passes the top (1 - quantile) of `images`."""
    build_tiny_bundle(root, cls_size=64, seg_size=64, with_saliency=True, min_area=10, bottom=0.5)
    bundle = load_bundle(root)
    models = CascadeModels(bundle, "cpu", threads=1)
    items = [load_item(str(p), bundle, ReadPolicy()) for p in images]
    x = np.stack([it.gate_input.x for it in items if it.gate_input is not None])
    prob, _ = models.gate(x, use_tta=True)
    card = json.loads((root / "card.json").read_text())
    card["thresholds"]["gate"] = float(np.quantile(prob, quantile))
    (root / "card.json").write_text(json.dumps(card))
    seal(root)
    return load_bundle(root)


class CountingModels(CascadeModels):
    """CascadeModels that counts the images the segmenter sees (without TTA copies)."""

    segmented = 0

    def segment(self, x: np.ndarray, use_tta: bool) -> np.ndarray:
        type(self).segmented += len(x)
        return super().segment(x, use_tta)


@dataclass
class Batch:
    root: Path
    out: Path
    bundle: Bundle
    good: list[Path]
    bad: dict[Path, ErrorCode]
    records: list[dict[str, object]]
    segmented: int


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> Batch:
    root = tmp_path_factory.mktemp("predict")
    synthesize(SynthRequest(root / "synth", studies=STUDIES, size=SIZE, seed=11), workers=2)
    good = sorted((root / "synth" / "dicom-images-train").rglob("*.dcm"))
    bad = _bad_files(root / "bad", good[0])
    bundle = _calibrated_bundle(root / "bundle", good, quantile=0.6)
    options = PredictOptions(formats=ALL_FORMATS, batch_size=8, threads=1, read_workers=2)
    CountingModels.segmented = 0
    predictor = Predictor(bundle, options, models=CountingModels(bundle, "cpu", threads=1))
    out = root / "out"
    predictor.run([str(root / "synth" / "dicom-images-train"), str(root / "bad")], out)
    return Batch(root, out, bundle, good, bad, _records(out), CountingModels.segmented)


def test_every_input_appears_exactly_once(batch: Batch) -> None:
    inputs = Counter(str(r["input"]) for r in batch.records)
    expected = {str(p) for p in batch.good} | {str(p) for p in batch.bad}
    assert set(inputs) == expected and set(inputs.values()) == {1}
    for record in batch.records:
        assert {"input", "status", "error_code", "message", "study_uid", "sop_uid", "probability", "positive",
                "mask_area_px", "priority", "bundle", "timings_ms"} <= set(record)
        assert record["bundle"] == batch.bundle.label


def test_good_files_succeed_and_bad_files_get_their_codes(batch: Batch) -> None:
    by_input = {str(r["input"]): r for r in batch.records}
    assert all(by_input[str(p)]["status"] == "ok" for p in batch.good)
    for path, code in batch.bad.items():
        record = by_input[str(path)]
        assert (record["status"], record["error_code"]) == ("error", code.value), record
        assert record["message"] and str(path) not in str(record["message"])


def test_segmenter_runs_only_on_gated_images(batch: Batch) -> None:
    ok = [r for r in batch.records if r["status"] == "ok"]
    gate = batch.bundle.thresholds.gate
    for r in ok:
        assert r["gated"] == (float(r["probability"]) >= gate)  # type: ignore[arg-type]
        assert ("segment" in r["timings_ms"]) == r["gated"]  # type: ignore[operator]
        assert not r["positive"] or r["gated"]
    gated = sum(bool(r["gated"]) for r in ok)
    assert 0.3 * len(ok) < gated < 0.5 * len(ok)
    assert batch.segmented == gated
    assert any(r["positive"] for r in ok)


def test_outputs_per_study_folder(batch: Batch) -> None:
    for r in (r for r in batch.records if r["status"] == "ok"):
        outputs = r["outputs"]
        assert isinstance(outputs, dict)
        expected = {"overlay_png", "sc", "sr"} | ({"mask_png", "seg"} if r["positive"] else set())
        expected |= {"saliency_png", "saliency_sc"} if r["gated"] else set()  # the saliency model's map
        assert set(outputs) == expected, r
        for rel in outputs.values():
            path = batch.out / rel
            assert path.is_file() and path.parent.name == r["study_uid"]
            assert path.resolve().is_relative_to(batch.out.resolve())
    leftovers = [p for p in batch.out.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    assert not leftovers


def test_nothing_escapes_out_and_no_patient_attribute_names_a_path(batch: Batch) -> None:
    assert not (batch.root / "escaped").exists() and not (batch.out.parent.parent / "escaped").exists()
    names = {p.name for p in batch.out.rglob("*")}
    assert not any("escaped" in n or "SYN-" in n or "PHANTOM" in n for n in names)


def test_seg_reads_back_matches_the_mask_png_and_references_the_source(batch: Batch) -> None:
    positives = [r for r in batch.records if r["positive"]]
    assert positives
    for r in positives[:10]:
        outputs = r["outputs"]
        assert isinstance(outputs, dict)
        seg = hd.seg.segread(batch.out / outputs["seg"])
        source = pydicom.dcmread(r["input"], stop_before_pixels=True)  # type: ignore[call-overload]
        assert seg.StudyInstanceUID == source.StudyInstanceUID and seg.PatientID == source.PatientID
        uids = (source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID)
        assert seg.get_source_image_uids() == [uids]
        assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "36118008"
        assert seg.SegmentSequence[0].SegmentAlgorithmName == batch.bundle.name
        png = np.asarray(Image.open(batch.out / outputs["mask_png"])) > 0
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[source.SOPInstanceUID], segment_numbers=[1]
        )
        mask = pixels[0, :, :, 0] > 0
        assert np.array_equal(mask, png) and int(png.sum()) == r["mask_area_px"]


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} not found; install the Debian package {package}")
        pytest.skip(f"{name} not found; install the Debian package {package}")
    return path


def test_every_seg_and_sc_passes_dciodvfy_and_dcmdump(batch: Batch) -> None:
    dciodvfy, dcmdump = _tool("dciodvfy", "dicom3tools"), _tool("dcmdump", "dcmtk")
    files = sorted(batch.out.rglob("*_seg.dcm")) + sorted(batch.out.rglob("*_sc.dcm"))
    assert len(files) > STUDIES
    failures = []
    for path in files:
        proc = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, check=False)
        errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]
        dump = subprocess.run([dcmdump, "-q", str(path)], capture_output=True, text=True, check=False)
        if errors or dump.returncode != 0:
            failures.append(f"{path.name}: {errors} dcmdump rc={dump.returncode} {dump.stderr[:200]}")
    assert not failures, "\n".join(failures[:10])


def test_worklist_one_row_per_study_positives_first(batch: Batch) -> None:
    rows = list(csv.DictReader((batch.out / "worklist.csv").open()))
    studies = {r["study_uid"] for r in batch.records if r["status"] == "ok"}
    assert {row["study_uid"] for row in rows} >= studies and len(rows) == len({r["study_uid"] for r in rows})
    flags = [row["positive"] == "true" for row in rows]
    assert flags == sorted(flags, reverse=True)
    positives = [float(row["max_probability"]) for row in rows if row["positive"] == "true"]
    assert positives == sorted(positives, reverse=True)


def test_resume_skips_finished_inputs_and_a_rerun_without_it_is_refused(
    batch: Batch, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(batch.out, out)
    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    (out / "results.jsonl").write_text("".join(lines[:120]) + lines[120][:40])  # interrupted mid-line
    options = PredictOptions(formats=frozenset({"png"}), threads=1, read_workers=2, resume=True)
    args = [str(batch.root / "synth" / "dicom-images-train"), str(batch.root / "bad")]
    summary = Predictor(batch.bundle, options).run(args, out)
    assert summary.skipped == 120 and len(summary.records) == len(lines) - 120
    earlier = sum(json.loads(line)["status"] == "error" for line in lines[:120])
    assert summary.failed_before == earlier and summary.failed_in_batch == sum(
        r["status"] == "error" for r in _records(out)
    )
    inputs = Counter(str(r["input"]) for r in _records(out))
    assert len(inputs) == len(lines) and set(inputs.values()) == {1}
    assert len(read_results(out)) == len(lines)
    refused = subprocess.run(
        [sys.executable, "-m", "triage.cli.main", "predict", args[0], "--model", str(batch.bundle.root),
         "--out", str(out)], capture_output=True, text=True, check=False,
    )
    assert refused.returncode == 2 and "--resume" in refused.stderr


def test_a_resumed_batch_exits_1_for_inputs_that_failed_before_the_interruption(
    batch: Batch, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(batch.out, out)
    assert any(r["status"] == "error" for r in _records(out))
    args = [str(batch.root / "synth" / "dicom-images-train"), str(batch.root / "bad")]
    done = _cli("predict", *args, "--model", str(batch.bundle.root), "--out", str(out), "--resume")
    assert done.returncode == 1, done.stdout  # nothing left to run, but the batch has failed inputs
    assert "failed in earlier runs of this batch" in done.stdout


def test_a_crash_inside_one_file_does_not_end_the_batch(batch: Batch, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import triage.cascade.items as items

    poisoned = batch.good[3]
    real = items.read_image

    def read_image(path: Path, policy: ReadPolicy, need: object = None) -> object:
        if Path(path) == poisoned:
            raise RuntimeError("boom")
        return real(path, policy, need)  # type: ignore[arg-type]

    monkeypatch.setattr(items, "read_image", read_image)
    files = [str(p) for p in batch.good[:12]]
    summary = Predictor(batch.bundle, PredictOptions(formats=frozenset(), threads=1)).run(files, tmp_path)
    by_input = {r.input: r for r in summary.records}
    assert by_input[str(poisoned)].error_code == ErrorCode.INTERNAL.value
    assert "boom" in str(by_input[str(poisoned)].message)
    assert sum(r.status == "ok" for r in summary.records) == 11


def test_a_model_failure_on_one_image_fails_only_that_image(batch: Batch, tmp_path: Path) -> None:
    poisoned = load_item(str(batch.good[5]), batch.bundle, ReadPolicy()).gate_input
    assert poisoned is not None

    class Poisoned(CascadeModels):
        def gate(self, x: np.ndarray, use_tta: bool) -> tuple[np.ndarray, np.ndarray | None]:
            if any(np.array_equal(xi, poisoned.x) for xi in x):
                raise RuntimeError("out of memory (simulated)")
            return super().gate(x, use_tta)

    files = [str(p) for p in batch.good[:16]]
    options = PredictOptions(formats=frozenset(), batch_size=8, threads=1)
    summary = Predictor(batch.bundle, options, Poisoned(batch.bundle, "cpu", 1)).run(files, tmp_path)
    failed = [r for r in summary.records if r.status == "error"]
    assert [r.input for r in failed] == [str(batch.good[5])]
    assert failed[0].error_code == ErrorCode.INFERENCE_FAILED.value


def test_items_keep_only_what_their_outputs_need_and_the_outputs_do_not_change(
    batch: Batch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The readers release the 16 MB source image once the model inputs are made (an overlay needs only a
    copy at its own size, SEG and SR only the grid): the written outputs are those of the full image."""
    positives = [str(r["input"]) for r in batch.records if r.get("positive")][:3]
    assert positives, "the batch has positive images"
    kept = {k: load_item(positives[0], batch.bundle, ReadPolicy(), k) for k in ("full", "overlay", "none")}
    full = kept["full"].image
    assert full is not None and full.pixels.shape == (full.rows, full.columns)
    for keep in ("overlay", "none"):
        item = kept[keep]
        assert item.image is not None and item.image.pixels.size == 0
        assert item.source_shape == full.pixels.shape
        assert np.array_equal(item.gate_input.x, kept["full"].gate_input.x)  # type: ignore[union-attr]
    assert kept["overlay"].picture.shape[0] <= 1024 and kept["full"].display is None
    with pytest.raises(ValueError, match="released"):
        _ = kept["none"].picture

    def run(out: Path, formats: frozenset[str]) -> dict[str, np.ndarray]:
        summary = Predictor(batch.bundle, PredictOptions(formats=formats, threads=1)).run(positives, out)
        arrays: dict[str, np.ndarray] = {}
        for record in summary.records:
            assert record.status == "ok" and record.positive, record.message
            for kind, rel in record.outputs.items():
                path = out / rel
                dicom = path.suffix == ".dcm"
                arrays[f"{record.sop_uid}/{kind}"] = (
                    pydicom.dcmread(path).pixel_array if dicom else np.asarray(Image.open(path))
                )
        return arrays

    pictures = frozenset({"png", "sc", "seg"})
    lean = run(tmp_path / "lean", pictures)
    assert {k.split("/")[1] for k in lean} >= {"overlay_png", "mask_png", "saliency_png", "sc", "seg"}
    seg_only = run(tmp_path / "seg", frozenset({"seg"}))
    import triage.cascade.predict as predict_mod

    monkeypatch.setattr(predict_mod, "pixels_to_keep", lambda formats: "full")
    whole = run(tmp_path / "full", pictures)
    assert lean.keys() == whole.keys()
    for key, arr in whole.items():
        if key.endswith("saliency_png"):  # two half-width panels: shrunk from the overlay copy, ±1 grey level
            assert arr.shape == lean[key].shape
            assert np.abs(arr.astype(int) - lean[key].astype(int)).mean() < 1.0, key
        else:
            assert np.array_equal(arr, lean[key]), key
    assert seg_only.keys() == {k for k in whole if k.endswith("/seg")}
    assert all(np.array_equal(arr, whole[key]) for key, arr in seg_only.items())


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "triage.cli.main", "predict", *args],
                          capture_output=True, text=True, check=False)


def test_cli_exit_status(batch: Batch, tmp_path: Path) -> None:
    good = [str(p) for p in batch.good[:3]]
    model = str(batch.bundle.root)
    ok = _cli(*good, "--model", model, "--out", str(tmp_path / "a"), "--format", "png")
    assert ok.returncode == 0, ok.stderr
    assert "images processed" in ok.stdout
    failed = _cli(*good, str(batch.root / "bad"), "--model", model, "--out", str(tmp_path / "b"))
    assert failed.returncode == 1
    assert "not_dicom" in failed.stdout and "truncated" in failed.stdout
    for usage in (
        ("--model", str(tmp_path / "nothing"), "--out", str(tmp_path / "c")),
        ("--model", model, "--out", str(tmp_path / "d"), "--format", "png,jpeg"),
        ("--model", model, "--out", str(tmp_path / "e"), "--batch-size", "0"),
    ):
        proc = _cli(*good, *usage)
        assert proc.returncode == 2, (usage, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr
    missing = _cli(*good, "--model", str(tmp_path / "nothing"), "--out", str(tmp_path / "f"))
    assert "bundle_missing" in missing.stderr


def test_damaged_bundle_is_refused_before_any_input_is_read(batch: Batch, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(batch.bundle.root, bundle)
    with (bundle / "segmenter.onnx").open("ab") as fh:
        fh.write(b"\0")
    proc = _cli(str(batch.good[0]), "--model", str(bundle), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "bundle_hash_mismatch" in proc.stderr
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_no_patient_name_or_id_reaches_the_terminal(batch: Batch, tmp_path: Path) -> None:
    """highdicom warns about single-component person names *quoting the name*; pydicom quotes bad values.
    Neither text may reach stdout/stderr, at any verbosity."""
    folder = tmp_path / "phi"
    folder.mkdir()
    for i, path in enumerate(batch.good[:4]):
        ds = pydicom.dcmread(path)
        ds.PatientName = "ZZSECRETNAME"  # one component: highdicom warns, quoting it
        ds.PatientID = "ZZSECRETID42"
        ds.PatientBirthDate = "19010203"
        ds.InstitutionName = "ZZ" * 40  # too long for LO: pydicom warns, quoting the value
        ds.save_as(folder / f"{i}.dcm")
    for verbosity in ((), ("-vv",)):
        proc = subprocess.run(
            [sys.executable, "-m", "triage.cli.main", *verbosity, "predict", str(folder), "--model",
             str(batch.bundle.root), "--out", str(tmp_path / f"out{len(verbosity)}"),
             "--format", "png,seg,sc,sr"],
            capture_output=True, text=True, check=False,
        )
        assert proc.returncode in (0, 1), proc.stderr
        text = proc.stdout + proc.stderr
        for secret in ("ZZSECRETNAME", "ZZSECRETID42", "19010203", "ZZZZZZ"):
            assert secret not in text, (verbosity, secret)
        logs = [p for p in (tmp_path / f"out{len(verbosity)}").rglob("*") if p.suffix in (".jsonl", ".csv")]
        for path in logs:
            assert "ZZSECRET" not in path.read_text()


@pytest.mark.parametrize("any_modality", [False, True])
def test_every_pydicom_test_file_gets_a_result_or_a_clear_error(batch: Batch, tmp_path: Path,
                                                                any_modality: bool) -> None:
    """Files nobody here wrote, in all their transfer syntaxes and oddities, through the real command."""
    from pydicom.data import DATA_ROOT

    folder = Path(DATA_ROOT) / "test_files"
    flags = ["--any-modality"] if any_modality else []
    proc = subprocess.run(
        [sys.executable, "-m", "triage.cli.main", "predict", str(folder), "--model", str(batch.bundle.root),
         "--out", str(tmp_path), "--format", "png,seg,sc,sr", *flags],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
    records = _records(tmp_path)
    files = [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")]
    files = [p for p in files if p.name != "DICOMDIR"]
    # a record names its input by the path's digest (the path itself has the file's patient identifiers
    # redacted: these files have patient folders)
    assert Counter(str(r["input_sha256"]) for r in records) == Counter(input_digest(str(p)) for p in files)
    codes = Counter(str(r["error_code"]) for r in records if r["status"] == "error")
    assert "internal_error" not in codes, codes
    assert all(r["message"] for r in records if r["status"] == "error")
    decided = [r for r in records if r["probability"] is not None]
    # 6 with --any-modality: liver_1frame / liver_expb_1frame (1-bit segmentations) are degenerate_image
    assert len(decided) == (6 if any_modality else 0)
    assert codes.get("degenerate_image", 0) == (2 if any_modality else 0)
    for r in decided:  # a SEG that cannot reference a non-radiograph source fails alone; the rest stays
        if r["status"] == "error":
            assert r["error_code"] == "write_failed" and str(r["message"]).startswith("seg: ")
            assert {"sc", "sr", "overlay_png"} <= set(r["outputs"])  # type: ignore[arg-type]
