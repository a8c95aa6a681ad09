"""The Dockerfile and the systemd units agree with the project: Python version, extras, pins, ports,
health check, and every command-line option they use exists. (No container engine runs here, so the
image itself is not built by the tests; docs/deploy.md says how to build and run it.)"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import typer.main

from serving.cli import app
from serving.config import ListenConfig, ServiceConfig
from tests.serving.helpers import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
sys.path.insert(0, str(ROOT / "tools"))
import image_requirements  # noqa: E402


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(
        r"\\\n", " ", "\n".join(x for x in DOCKERFILE.splitlines() if not x.lstrip().startswith("#"))
    )
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines() if line.strip()
    ]


def test_dockerfile_python_matches_the_project_and_the_lock() -> None:
    requires = PYPROJECT["project"]["requires-python"]
    assert requires == ">=3.11"
    assert "python3.11 -m venv" in DOCKERFILE and "python3.11-venv" in DOCKERFILE
    assert "Python 3.11" in (ROOT / "constraints.txt").read_text().splitlines()[0]


def test_dockerfile_variants_user_health_entrypoint() -> None:
    steps = _instructions()
    args = dict(
        a.split("=", 1) for k, a in steps if k == "ARG" and "=" in a
    )  # the declarations with defaults
    assert args["VARIANT"] == "gpu"
    # CUDA 13 + cuDNN 9 come as wheels with onnxruntime-gpu (tests/serving/test_gpu_requirements.py): the
    # GPU base needs no CUDA of its own, and must not bring another major
    assert "cuda:12" not in args["CUDA_BASE"]
    gpu_extra = PYPROJECT["project"]["optional-dependencies"]["gpu"]
    assert any(r.startswith("onnxruntime-gpu[cuda,cudnn]") for r in gpu_extra)
    froms = [a for k, a in steps if k == "FROM"]
    assert "${CUDA_BASE} AS base-gpu" in froms and "${CPU_BASE} AS base-cpu" in froms
    assert froms[-1] == "base-${VARIANT}"
    users = [a for k, a in steps if k == "USER"]
    assert users and users[-1] not in ("root", "0")
    [health] = [a for k, a in steps if k == "HEALTHCHECK"]
    assert "/healthz" in health and "TRIAGE_HTTP_PORT" in health
    assert [a for k, a in steps if k == "ENTRYPOINT"] == ['["triage"]']
    exposed = {int(p) for k, a in steps if k == "EXPOSE" for p in a.split()}
    service = ServiceConfig(out=Path("o"), bundle=Path("b"))
    assert exposed == {service.http_port, ListenConfig().port}
    assert f"TRIAGE_HTTP_PORT={service.http_port}" in DOCKERFILE.replace(" ", "")


def test_image_requirements_are_the_projects_with_the_lock() -> None:
    runs = " ".join(a for k, a in _instructions() if k == "RUN")
    assert "pip install -c constraints.txt -c constraints-gpu.txt -r /tmp/requirements.txt" in runs
    assert "pip install --no-deps ." in runs
    extras = re.findall(r"--extras (\S+)", runs)
    optional = PYPROJECT["project"]["optional-dependencies"]
    assert extras and all(e in optional for x in extras for e in x.split(","))
    pins = image_requirements.pins(ROOT / "constraints.txt")
    names = image_requirements.name_of
    pyproject, constraints = ROOT / "pyproject.toml", ROOT / "constraints.txt"
    cpu = image_requirements.requirements(pyproject, constraints, "cpu", ["serving"])
    gpu = image_requirements.requirements(
        pyproject, constraints, "gpu", ["serving"], "tensorrt-cu13==10.16.1.11"
    )
    runtime = {names(r) for r in PYPROJECT["project"]["dependencies"]} | {
        names(r) for r in optional["serving"]
    }
    assert {names(r) for r in cpu} == runtime
    # cuda-bindings: device memory and streams for the TensorRT backend (triage/backends/tensorrt.py);
    # nvidia-cublas: linked by onnxruntime-gpu's CUDA provider, missing from its `cuda` extra
    gpu_only = {"onnxruntime-gpu", "nvidia-cublas", "cuda-bindings", "tensorrt-cu13"}
    assert {names(r) for r in gpu} == (runtime - {"onnxruntime"}) | gpu_only
    assert f"onnxruntime-gpu[cuda,cudnn]=={pins['onnxruntime']}" in gpu
    assert "tensorrt-cu13==10.16.1.11" in gpu
    unpinned = sorted(n for n in {names(r) for r in cpu} if n not in pins)
    assert not unpinned, f"constraints.txt pins none of {unpinned}: the image would not be locked"
    script = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "image_requirements.py"),
            "--variant",
            "cpu",
            "--extras",
            "nonsense",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert script.returncode != 0 and "unknown extras ['nonsense']" in script.stderr


def _options(command: str) -> set[str]:
    group = typer.main.get_command(app)
    params = group.commands[command].params  # type: ignore[attr-defined]
    return {opt for p in params for opt in (*p.opts, *p.secondary_opts) if opt.startswith("--")}


def _env(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and line[0] != "#")
    return {k.strip(): v.strip() for k, v in pairs}


def test_systemd_units_use_existing_options_and_their_env_files() -> None:
    for command in ("watch", "listen", "poll"):
        unit = (ROOT / "deploy" / f"triage-{command}.service").read_text()
        env = _env(ROOT / "deploy" / f"{command}.env")
        joined = re.sub(r"\\\n\s*", " ", unit)
        [start] = re.findall(r"^ExecStart=(.*)$", joined, flags=re.M)
        line = re.sub(r"\$\{?(\w+)\}?", lambda m, env=env: env[m.group(1)], start)
        argv = shlex.split(line)
        assert argv[:2] == ["/opt/triage/venv/bin/triage", command]
        used = {a for a in argv if a.startswith("--")}
        assert used <= _options(command), used - _options(command)
        assert "Restart=on-failure" in unit and "KillSignal=SIGTERM" in unit and "User=triage" in unit
        for key in re.findall(r"\$\{?(\w+)\}?", start):
            assert key in env, f"{key} used by the unit but not set in deploy/{command}.env"
