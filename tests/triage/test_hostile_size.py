"""Memory bombs (issue 14, item 2): sizes are checked before decoding, from the header and the codestream;
each bomb gets its own ``too_large`` record and a batch holding all of them stays far below 2 GB."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.bundles import build_tiny_bundle
from tests.triage.hostile import BOMBS, j2k_bomb, radiograph, save
from triage.errors import ErrorCode, TriageError
from triage.io.codestream import DEFAULT_MAX_PIXELS, SizeLimit, check_decoded_size, codestream_shape
from triage.io.dicom import ReadPolicy, read_image

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_each_bomb_is_too_large_before_decoding(tmp_path: Path, name: str) -> None:
    path = BOMBS[name](tmp_path / name)
    with pytest.raises(TriageError) as info:
        read_image(path, ReadPolicy(min_size=1))
    assert info.value.code is ErrorCode.TOO_LARGE
    assert "--max-pixels" in info.value.message


def test_a_real_4k_radiograph_header_is_admitted_and_the_limit_is_configurable(tmp_path: Path) -> None:
    ds = radiograph(1, 128)
    ds.Rows = ds.Columns = 4096
    check_decoded_size(ds, SizeLimit())  # 16.8 M pixels: under the default
    assert DEFAULT_MAX_PIXELS >= 4320 * 4320
    with pytest.raises(TriageError) as info:
        check_decoded_size(ds, SizeLimit(max_pixels=4096 * 4095))
    assert info.value.code is ErrorCode.TOO_LARGE and "4096×4096" in info.value.message
    small = save(radiograph(2, 256), tmp_path / "small.dcm")
    assert read_image(small, ReadPolicy(max_pixels=256 * 256)).rows == 256
    with pytest.raises(TriageError, match="too_large"):
        read_image(small, ReadPolicy(max_pixels=256 * 255))
    with pytest.raises(ValueError, match="max_pixels"):
        ReadPolicy(max_pixels=0)


def test_codestream_dimensions_of_jpeg_and_jpeg2000(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((30, 70), np.uint8)).save(buffer, format="JPEG")
    assert codestream_shape(buffer.getvalue()) == (30, 70, 1)
    frame = j2k_bomb(tmp_path / "j.dcm", header=256, codestream=1000).read_bytes()
    start = frame.index(b"\xff\x4f\xff\x51")
    assert codestream_shape(frame[start:]) == (1000, 1000, 1)
    assert codestream_shape(b"\0" * 64) is None


def test_a_batch_of_bombs_stays_under_2_gb_and_records_each_input_once(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name, make in BOMBS.items():
        make(folder / name)
    save(radiograph(1, 256), folder / "good.dcm")
    bundle = build_tiny_bundle(tmp_path / "bundle")
    out = tmp_path / "out"
    measure = (
        "import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
        "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", measure, sys.executable, "-m", "triage.cli.main", "predict", str(folder),
         "--model", str(bundle), "--out", str(out), "--format", "png", "--read-workers", "2"],
        capture_output=True, text=True, check=False,
    )
    rc, rss_kb = (int(v) for v in proc.stdout.split()[-2:])
    assert rc == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert rss_kb < 2 * 2**20, f"peak RSS {rss_kb / 2**10:.0f} MB"
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert Counter(Path(r["input"]).name for r in records) == Counter([*BOMBS, "good.dcm"])
    codes = {Path(r["input"]).name: r["error_code"] for r in records}
    assert codes == {**{name: "too_large" for name in BOMBS}, "good.dcm": None}


def test_the_commands_default_to_the_reader_limit() -> None:
    """The CLIs spell the default out (importing the reader would slow `triage --help`): keep them equal."""
    import dataclasses
    import inspect

    from serving.cli import ServiceOptions
    from triage.cli.main import predict

    assert inspect.signature(predict).parameters["max_pixels"].default == DEFAULT_MAX_PIXELS
    fields = {f.name: f.default for f in dataclasses.fields(ServiceOptions)}
    assert fields["max_pixels"] == DEFAULT_MAX_PIXELS
