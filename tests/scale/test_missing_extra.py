"""Without the scale extra, `triage predict --engine ray` says which extra to install, in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.bundles import build_tiny_bundle
from tests.triage.hostile import radiograph, save

# Runs the CLI with Ray made unimportable (as on an install without the extra).
WITHOUT_RAY = (
    "import runpy, sys; sys.modules['ray'] = None; sys.modules['ray.data'] = None; "
    "sys.argv = ['triage', *sys.argv[1:]]; runpy.run_module('triage.cli.main', run_name='__main__')"
)


def test_engine_ray_without_the_extra_names_the_extra(tmp_path: Path) -> None:
    image = save(radiograph(1, 128), tmp_path / "a.dcm")
    bundle = build_tiny_bundle(tmp_path / "bundle")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT_RAY, "predict", str(image), "-m", str(bundle), "-o", str(out),
         "--engine", "ray"],
        capture_output=True, text=True, check=False, timeout=300,
    )
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "pip install 'triage[scale]'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (out / "results.jsonl").exists()
