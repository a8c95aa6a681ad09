"""Print the pip requirements of the container image, one per line, from pyproject.toml.

The runtime's dependencies plus the requested extras. For the GPU variant, ``onnxruntime`` is replaced by
the gpu extra: ``onnxruntime-gpu[cuda,cudnn]`` (CUDA 13 and cuDNN 9 as wheels) pinned to the version
constraints.txt pins for ``onnxruntime`` (the two cannot be installed side by side: both provide the
``onnxruntime`` module, and removing one breaks the other). ``--tensorrt SPEC`` adds a TensorRT
requirement: none installs from PyPI (docs/export.md), so give one your package index serves, pinned to
the version the bundle's engines were exported with. Installed with
``pip install -c constraints.txt [-c constraints-gpu.txt] -r <this output>``, every package gets the
locks' exact version.

Usage:  python tools/image_requirements.py --variant gpu|cpu [--extras serving,gpu] [--tensorrt SPEC]
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("gpu", "cpu")


def name_of(requirement: str) -> str:
    """The normalised project name of a requirement string (PEP 503)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"cannot parse requirement {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def pins(constraints: Path) -> dict[str, str]:
    """name → version of every ``name==version`` line in the constraints file."""
    found = {}
    for line in constraints.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            found[name_of(name)] = version.strip()
    return found


def requirements(
    pyproject: Path, constraints: Path, variant: str, extras: list[str], tensorrt: str | None = None
) -> list[str]:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise ValueError(f"unknown extras {unknown}; pyproject.toml has {sorted(optional)}")
    wanted = list(project["dependencies"]) + [r for e in extras for r in optional[e]]
    if variant == "gpu" and "gpu" not in extras:
        wanted += optional["gpu"]
    out: list[str] = []
    for requirement in wanted:
        name = name_of(requirement)
        if variant == "gpu" and name == "onnxruntime":
            continue  # replaced by onnxruntime-gpu
        if variant == "cpu" and name in {name_of(r) for r in optional.get("gpu", [])}:
            continue
        if name == "onnxruntime-gpu":
            version = pins(constraints).get("onnxruntime")
            if version is None:
                raise ValueError(f"{constraints} pins no onnxruntime version to match onnxruntime-gpu to")
            extras_of = re.search(r"\[[^\]]*\]", requirement)  # e.g. [cuda,cudnn]: kept
            requirement = f"onnxruntime-gpu{extras_of.group(0) if extras_of else ''}=={version}"
        if requirement not in out:
            out.append(requirement)
    if tensorrt:
        out.append(tensorrt)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variant", choices=VARIANTS, required=True)
    parser.add_argument("--extras", default="serving", help="comma-separated extras of pyproject.toml")
    parser.add_argument(
        "--tensorrt", default=None, help="a TensorRT requirement to add, e.g. tensorrt-cu13==10.16.1.11"
    )
    parser.add_argument("--pyproject", type=Path, default=ROOT / "pyproject.toml")
    parser.add_argument("--constraints", type=Path, default=ROOT / "constraints.txt")
    args = parser.parse_args()
    extras = [e.strip() for e in args.extras.split(",") if e.strip()]
    try:
        lines = requirements(args.pyproject, args.constraints, args.variant, extras, args.tensorrt or None)
    except ValueError as exc:
        sys.exit(f"image_requirements: error: {exc}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
