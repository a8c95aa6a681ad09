"""The GPU image's requirements are consistent: onnxruntime-gpu at the lock's onnxruntime version, the
CUDA 13 / cuDNN 9 wheels it links locked in constraints-gpu.txt (agreeing with constraints.txt), no
CUDA 12 base or docs. With TRIAGE_NETWORK_TESTS=1 (it downloads ~1.5 GB of wheels the first time, then
pip's cache), pip resolves them against the registry and the onnxruntime-gpu wheel's CUDA provider is
checked to link exactly these sonames; skipped otherwise or when the registry is unreachable."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

from tests.serving.helpers import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import image_requirements

# What onnxruntime-gpu 1.31.1's libonnxruntime_providers_cuda.so links (readelf -d, NEEDED; cuDNN is
# loaded at run time), and the wheel providing each soname: its major version is the soname's.
LINKED = {
    "libcudart.so.13": "nvidia-cuda-runtime",
    "libcublas.so.13": "nvidia-cublas",
    "libcublasLt.so.13": "nvidia-cublas",
    "libcurand.so.10": "nvidia-curand",
}
RUNTIME_LOADED = {"libcudnn.so.9": "nvidia-cudnn-cu13"}
SYSTEM = re.compile(r"^(libc|libm|libdl|librt|libpthread|libstdc\+\+|libgcc_s|ld-linux-x86-64|libcuda)\.so")
PYPROJECT, CONSTRAINTS, GPU_LOCK = (
    ROOT / "pyproject.toml",
    ROOT / "constraints.txt",
    ROOT / "constraints-gpu.txt",
)


def _major(soname: str) -> str:
    return soname.rsplit(".so.", 1)[1]


def _gpu_requirements() -> list[str]:
    return image_requirements.requirements(PYPROJECT, CONSTRAINTS, "gpu", ["serving"])


def test_gpu_lock_agrees_with_the_main_lock_and_the_linked_libraries() -> None:
    main, gpu = image_requirements.pins(CONSTRAINTS), image_requirements.pins(GPU_LOCK)
    assert gpu["onnxruntime-gpu"] == main["onnxruntime"]
    assert {n: v for n, v in gpu.items() if n in main and main[n] != v} == {}
    gpu_only = {image_requirements.name_of(r) for r in _gpu_requirements()} - set(main) - {"onnxruntime-gpu"}
    assert gpu_only <= set(gpu), "every GPU-only requirement is locked in constraints-gpu.txt"
    for soname, package in {**LINKED, **RUNTIME_LOADED}.items():
        assert gpu[package].split(".")[0] == _major(soname), (soname, package, gpu[package])


def test_no_cuda_12_left_in_the_image_or_docs() -> None:
    for path in (
        ROOT / "Dockerfile",
        ROOT / "docs" / "deploy.md",
        ROOT / "docs" / "export.md",
        ROOT / "README.md",
    ):
        text = path.read_text()
        assert not re.search(r"CUDA 12|nvidia/cuda:12|tensorrt>=10,<11", text), path.name
    assert "constraints-gpu.txt" in (ROOT / "Dockerfile").read_text()


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, check=False, timeout=1800
    )


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("TRIAGE_NETWORK_TESTS") != "1", reason="set TRIAGE_NETWORK_TESTS=1")
def test_gpu_requirements_resolve_to_what_onnxruntime_gpu_links(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("\n".join(_gpu_requirements()))
    report = tmp_path / "report.json"
    resolved = _pip(
        "install",
        "--dry-run",
        "--ignore-installed",
        "--quiet",
        "--report",
        str(report),
        "-c",
        str(CONSTRAINTS),
        "-c",
        str(GPU_LOCK),
        "-r",
        str(requirements),
    )
    if resolved.returncode != 0 and re.search(
        r"(?i)connection|network|resolve host|timed out", resolved.stderr
    ):
        pytest.skip("the package registry is unreachable")
    assert resolved.returncode == 0, resolved.stderr[-2000:]
    versions = {
        image_requirements.name_of(i["metadata"]["name"]): i["metadata"]["version"]
        for i in json.loads(report.read_text())["install"]
    }
    for soname, package in {**LINKED, **RUNTIME_LOADED}.items():
        assert versions[package].split(".")[0] == _major(soname), (soname, versions[package])

    if shutil.which("readelf") is None:
        pytest.skip("readelf (binutils) is needed to read the wheel's linked libraries")
    wheels = tmp_path / "wheels"
    pin = image_requirements.pins(GPU_LOCK)["onnxruntime-gpu"]
    assert (
        _pip("download", "--no-deps", "--quiet", "-d", str(wheels), f"onnxruntime-gpu=={pin}").returncode == 0
    )
    wheel = zipfile.ZipFile(next(wheels.glob("onnxruntime_gpu-*.whl")))
    with tempfile.TemporaryDirectory() as tmp:
        provider = wheel.extract("onnxruntime/capi/libonnxruntime_providers_cuda.so", tmp)
        dynamic = subprocess.run(
            ["readelf", "-d", provider], capture_output=True, text=True, check=True
        ).stdout
    needed = set(re.findall(r"\(NEEDED\).*\[(.+?)\]", dynamic))
    assert {n for n in needed if not SYSTEM.match(n)} == set(LINKED)
