"""Model-only speed: PyTorch eager vs ONNX Runtime on the seed architecture, batch 8, on this machine.

Uses what ``bench_cascade.py`` leaves in its work folder (``run-classifier``, ``run-segmenter`` and the
exported ``seed-bundle``), so run that first. Prints ms per image (best of ``--repeat``) and the ratio.

Usage:  python benchmarks/bench_models.py [--work /tmp/triage-bench] [--threads 2] [--repeat 4]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BATCH = 8


def best_ms_per_image(call: Callable[[], object], repeat: int) -> float:
    call()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return 1000 * best / BATCH


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/triage-bench"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=4)
    args = parser.parse_args()

    import onnxruntime as ort
    import torch

    from export.onnx_export import export_wrapper
    from export.runs import load_run

    bundle = args.work / "seed-bundle"
    if not (bundle / "card.json").is_file():
        sys.exit(f"bench_models: no bundle in {bundle}; run benchmarks/bench_cascade.py first")
    torch.set_num_threads(args.threads)
    print(f"{'model':<12} {'input':>6} {'torch eager ms/img':>19} {'ONNX Runtime ms/img':>20} {'ratio':>7}")
    for role, size in (("classifier", 224), ("segmenter", 256)):
        module = export_wrapper(load_run(args.work / f"run-{role}"))[0].eval()
        x = np.random.default_rng(0).random((BATCH, 1, size, size), dtype=np.float32)
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(
            str(bundle / f"{role}.onnx"), options, providers=["CPUExecutionProvider"]
        )
        feed = {session.get_inputs()[0].name: x}
        with torch.inference_mode():
            eager = best_ms_per_image(partial(module, torch.from_numpy(x)), args.repeat)
        onnx = best_ms_per_image(partial(session.run, None, feed), args.repeat)
        print(f"{role:<12} {size:>6} {eager:>19.1f} {onnx:>20.1f} {eager / onnx:>6.2f}x")


if __name__ == "__main__":
    main()
