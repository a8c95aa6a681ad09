"""The saliency model's outputs: the CAM | saliency PNG panel and the greyscale DICOM Secondary Capture."""

from __future__ import annotations

import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from tests.triage.test_outputs_dicom import BUNDLE, SIZE, VARIANTS, require_tool, source
from triage.outputs.dicom_objects import SERIES_NUMBER
from triage.outputs.saliency import build_saliency_sc, render_saliency_panel, write_saliency_sc


def saliency_map(h: int = 32, w: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.exp(-((yy - h / 4) ** 2 + (xx - w / 4) ** 2) / (2 * (h / 8) ** 2)).astype(np.float32)


def test_sc_holds_the_map_on_the_source_grid(tmp_path: Path) -> None:
    src = source()
    full = saliency_map(SIZE, SIZE)
    path = tmp_path / "sal.dcm"
    uid = write_saliency_sc(src, full, path, bundle=BUNDLE)
    sc = hd.imread(path)
    assert sc.SOPInstanceUID == uid and sc.SeriesNumber == SERIES_NUMBER["saliency"]
    assert sc.StudyInstanceUID == src.StudyInstanceUID and sc.PatientID == src.PatientID
    assert sc.SeriesInstanceUID != src.SeriesInstanceUID
    assert sc.PhotometricInterpretation == "MONOCHROME2" and sc.BitsAllocated == 8
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert "255 x saliency" in sc.DerivationDescription
    np.testing.assert_array_equal(sc.pixel_array, np.rint(full * 255).astype(np.uint8))
    # a coarse map is resized to the source grid; its peak stays where it was
    write_saliency_sc(src, saliency_map(), tmp_path / "coarse.dcm", bundle=BUNDLE)
    pixels = pydicom.dcmread(tmp_path / "coarse.dcm").pixel_array
    assert pixels.shape == (SIZE, SIZE)
    y, x = np.unravel_index(int(np.argmax(pixels)), pixels.shape)
    assert abs(y - SIZE / 4) <= SIZE / 16 and abs(x - SIZE / 4) <= SIZE / 16


def test_sc_is_deterministic_and_rejects_bad_maps(tmp_path: Path) -> None:
    a = build_saliency_sc(source(), saliency_map(), bundle=BUNDLE)
    b = build_saliency_sc(source(), saliency_map(), bundle=BUNDLE)
    assert a.SOPInstanceUID == b.SOPInstanceUID and a.SeriesInstanceUID == b.SeriesInstanceUID
    with pytest.raises(ValueError, match=r"valid range is \[0, 1\]"):
        build_saliency_sc(source(), saliency_map() * 2, bundle=BUNDLE)
    with pytest.raises(ValueError, match="float HxW"):
        build_saliency_sc(source(), np.zeros((4, 4), np.uint8), bundle=BUNDLE)


def test_sc_passes_dciodvfy_for_every_variant(tmp_path: Path) -> None:
    dciodvfy = require_tool("dciodvfy", "dicom3tools")
    failures = []
    for modality, photometric in VARIANTS:
        path = tmp_path / f"{modality}-{photometric}.dcm"
        write_saliency_sc(source(modality, photometric), saliency_map(), path, bundle=BUNDLE)
        proc = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, check=False)
        errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]
        if errors:
            failures.append(f"{path.name}: {errors}")
    assert not failures, "\n".join(failures)


def test_panel_shows_cam_and_saliency_side_by_side() -> None:
    image = np.full((200, 160), 0.4, np.float32)
    mask = np.zeros((200, 160), bool)
    mask[20:60, 20:60] = True
    cam = np.zeros((8, 8), np.float32)
    cam[6:, 6:] = 1.0  # bottom right
    panel = render_saliency_panel(image, mask, cam, saliency_map(), caption="P(PTX)=0.9", max_side=512)
    assert panel.dtype == np.uint8 and panel.ndim == 3 and panel.shape[1] <= 512
    half = (panel.shape[1] - 6) // 2
    left, right = panel[:, :half].astype(int), panel[:, half + 6 :].astype(int)
    h = left.shape[0]

    # CAM hot at the bottom right of the left panel, the saliency model's map at the top left of the right
    def warm(p: np.ndarray) -> np.ndarray:
        return p[..., 0] - p[..., 2]

    assert warm(left[int(h * 0.6) : int(h * 0.7), int(half * 0.85) :]).mean() > 40
    assert warm(right[int(h * 0.2) : int(h * 0.3), int(half * 0.2) : int(half * 0.3)]).mean() > 40
    assert warm(right[int(h * 0.6) : int(h * 0.7), int(half * 0.85) :]).mean() < 5
    # without a CAM the left panel is the plain radiograph (plus outline and title)
    plain = render_saliency_panel(image, None, None, saliency_map(), max_side=512)
    assert plain.shape[1] == panel.shape[1]
