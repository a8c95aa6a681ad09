"""Speed of the chest-radiograph phantom on ONE core: prints a table and writes JSON.

Stages, per image at the chosen size (default 1024²):
  sample     draw the case (anatomy, lesion, confounders)
  render     rasterise image, pneumothorax / lung / drain masks (heatmap kept at low resolution)
  dicom      build the DICOM dataset and write it (uncompressed, RLE, JPEG 2000 lossless)
  study      everything `triage synth` does for one study with one worker (DICOM + 4 PNGs + RLE)

Usage:  python benchmarks/bench_synth.py [--size 1024] [--images 40] [--json out.json]
The goal in the foundation issue: sample + render ≥ 20 images/s at 1024² on one core.
"""

from __future__ import annotations

import argparse
import json
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # one core: set before numpy is imported

import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from triage.synth.anatomy import Habitus  # noqa: E402
from triage.synth.case import sample_case  # noqa: E402
from triage.synth.config import PhantomConfig  # noqa: E402
from triage.synth.dataset import SynthRequest, plan_studies, prepare_output  # noqa: E402
from triage.synth.dicom_writer import Acquisition, Identity, build_dataset, write_dataset  # noqa: E402
from triage.synth.render import render  # noqa: E402
from triage.synth.study import make_study  # noqa: E402


def _pin_one_core() -> str:
    if hasattr(os, "sched_setaffinity"):
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        return f"pinned to core {core}"
    return "not pinned"


def _identity(i: int) -> Identity:
    return Identity(
        "SYN-BENCH",
        "SYNTHETIC^BENCH",
        "O",
        50,
        f"1.2.3.{i}.1",
        f"1.2.3.{i}.2",
        f"1.2.3.{i}.3",
        "20250101",
        "120000",
        "BENCH",
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    pinned = _pin_one_core()
    cfg = PhantomConfig()
    n, size = args.images, args.size
    labels = [i % 9 < 2 for i in range(n)]  # 22 % positive, as in SIIM-ACR

    def cases() -> list:  # type: ignore[type-arg]
        return [
            sample_case(
                cfg, Habitus.sample(np.random.default_rng(i)), labels[i], np.random.default_rng([1, i])
            )
            for i in range(n)
        ]

    render(cases()[0], size)  # warm-up (noise bank, imports)
    results: dict[str, float] = {}
    t0 = time.perf_counter()
    sampled = cases()
    results["sample"] = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    rendered = [render(c, size) for c in sampled]
    results["render"] = (time.perf_counter() - t0) / n
    results["sample + render"] = results["sample"] + results["render"]
    with tempfile.TemporaryDirectory() as tmp:
        for compression in ("none", "rle", "j2k"):
            acq = Acquisition("DX", "MONOCHROME2", "PA", 0.42, compression=compression)  # type: ignore[arg-type]
            m = min(n, 10) if compression == "j2k" else n
            t0 = time.perf_counter()
            for i in range(m):
                write_dataset(
                    build_dataset(rendered[i].image, acq, _identity(i)), Path(tmp) / f"{compression}-{i}.dcm"
                )
            results[f"dicom write ({compression})"] = (time.perf_counter() - t0) / m
        req = SynthRequest(Path(tmp) / "set", studies=n, positive_fraction=0.22, size=size, seed=1)
        prepare_output(req.out, force=False)
        plans = plan_studies(req)
        t0 = time.perf_counter()
        for plan in plans:
            make_study(plan)
        results["whole study (uncompressed)"] = (time.perf_counter() - t0) / n

    cpu = platform.processor() or platform.machine()
    print(f"phantom speed, {size}x{size}, {n} images, one core ({pinned}), {cpu}")
    print(f"{'stage':<30} {'ms/image':>10} {'images/s':>10}")
    for name, sec in results.items():
        print(f"{name:<30} {1000 * sec:>10.1f} {1 / sec:>10.1f}")
    if args.json:
        args.json.write_text(json.dumps({"size": size, "images": n, "seconds_per_image": results}, indent=2))


if __name__ == "__main__":
    main()
