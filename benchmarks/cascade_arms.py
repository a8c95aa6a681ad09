"""The three arms of ``bench_cascade.py`` (each runs in its own process) and the data and bundle they share.

* ``arm_runtime``: ``triage predict``'s ``Predictor`` end to end;
* ``arm_reference``: the thesis's Algorithm 1 in PyTorch eager, with the same reading and writing;
* ``arm_floor``: the runtime's gated model calls on tensors decoded beforehand.

See ``bench_cascade.py`` for what is measured and how.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STAGES = ("read", "preprocess", "gate", "segment", "saliency", "write")
GATED_FRACTION = 0.22


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def study_files(data: Path) -> list[str]:
    return sorted(str(p) for p in (data / "dicom-images-train").rglob("*.dcm"))


# --------------------------------------------------------------------------------------------- setup


def make_data(work: Path, studies: int, compression: str) -> Path:
    from triage.synth.config import PhantomConfig
    from triage.synth.dataset import SynthRequest, synthesize

    folder = work / f"s2048-{compression}-{studies}"
    if (folder / "metadata.csv").exists():
        return folder
    cfg = PhantomConfig.from_dict({"compression": compression})
    synthesize(
        SynthRequest(folder, studies, GATED_FRACTION, 2048, 11, cfg), workers=len(os.sched_getaffinity(0))
    )
    return folder


def make_bundle(work: Path, data: Path) -> Path:
    """Seed-architecture runs (random weights) → `triage export` → thresholds calibrated on the set."""
    import torch
    from safetensors.torch import save_file

    from export.pipeline import ExportOptions, export_bundle
    from training.models import ArchSpec, build_model
    from training.run_format import RunCard, write_run_card
    from triage.bundle import load_bundle, seal
    from triage.cascade.items import load_item
    from triage.cascade.models import CascadeModels
    from triage.io.dicom import ReadPolicy

    bundle = work / "seed-bundle"
    if (bundle / "card.json").exists():
        return bundle
    norm = {"kind": "meanstd", "mean": [0.5], "std": [0.25]}
    runs = []
    for role, arch, size in (
        ("classifier", ArchSpec("classifier", "resnext50_32x4d"), 224),
        ("segmenter", ArchSpec("segmenter", "resnet34"), 256),
    ):
        torch.manual_seed(0)
        model = build_model(arch)
        run = work / f"run-{role}"
        run.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run / "best.safetensors"))
        write_run_card(
            run,
            RunCard(
                role=role,
                arch=arch,
                input_size=(size, size),
                normalization=norm,
                provenance={"kind": "random init for the speed benchmark"},
            ),
        )
        runs.append(run)
    export_bundle(
        runs,
        ExportOptions(
            out=bundle,
            name="seed-random",
            default_thresholds=True,
            on_step=lambda m: print(f"  export: {m}", flush=True),
        ),
    )
    b = load_bundle(bundle)
    items = [load_item(f, b, ReadPolicy()) for f in study_files(data)[:64]]
    _add_int8(bundle, items)
    models = CascadeModels(b, "cpu", variant="fp32")
    prob, _ = models.gate(np.stack([it.gate_input.x for it in items]), True)  # type: ignore[union-attr]
    seg = models.segment(np.stack([it.seg_input.x for it in items[:16]]), True)  # type: ignore[union-attr]
    card = json.loads((bundle / "card.json").read_text())
    how = {"source": "benchmark calibration (benchmarks/bench_cascade.py) on random weights: not for use"}
    card["thresholds"].update(
        {
            "gate": float(np.quantile(prob, 1 - GATED_FRACTION)),
            "top": float(np.quantile(seg, 0.7)),
            "bottom": float(np.quantile(seg, 0.5)),
            "min_area": 100,
            "min_component": 10,
            "chosen_by": {k: how for k in ("gate", "top", "min_area", "bottom", "min_component")},
        }
    )
    (bundle / "card.json").write_text(json.dumps(card, indent=2))
    seal(bundle)
    return bundle


def _add_int8(bundle: Path, items: list[Any]) -> None:
    """INT8 variants for the speed comparison only (random weights: their accuracy means nothing; the
    parity check that `triage export --int8` runs is skipped here and the card says so)."""
    from export.images import ImageSet
    from export.quantize import quantize

    card = json.loads((bundle / "card.json").read_text())
    images = ImageSet(items[:32], {})
    for role, entry in card["models"].items():
        file = entry["file"].replace(".onnx", ".int8.onnx")
        quantize(bundle / entry["file"], bundle / file, "image", images.batches(role), role)
        entry["variants"] = {
            "int8": {
                "file": file,
                "runtime": "onnx",
                "precision": "int8",
                "note": "benchmark only: random weights, no parity check",
            }
        }
    (bundle / "card.json").write_text(json.dumps(card, indent=2))


# ---------------------------------------------------------------------------------------------- arms


def _stage_means(records: list[dict[str, Any]]) -> dict[str, float]:
    ok = [r for r in records if r["status"] == "ok"]
    return {s: float(np.mean([r["timings_ms"].get(s, 0.0) for r in ok])) for s in STAGES} if ok else {}


def _decisions(records: list[dict[str, Any]]) -> dict[str, list[bool | None]]:
    """input → [gated, positive]: what decision changes are counted on (against the reference)."""
    return {r["input"]: [bool(r.get("gated")), bool(r.get("positive"))] for r in records}


def _mode(args: argparse.Namespace) -> tuple[str, str]:
    """``--variant`` "VARIANT[+MODE]" → (model variant, mode): mode "fulltta" switches adaptive TTA off,
    "fulldecode" reduced-resolution decoding; "" is the runtime as shipped."""
    variant, _, mode = args.variant.partition("+")
    if mode not in ("", "fulltta", "fulldecode"):
        raise SystemExit(f"unknown arm mode {mode!r} in --variant {args.variant!r}")
    return variant, mode


def arm_runtime(args: argparse.Namespace) -> dict[str, Any]:
    import triage.cascade.predict as predict_mod
    from triage.bundle import load_bundle
    from triage.cascade.predict import PredictOptions, Predictor

    files = json.loads(Path(args.files).read_text())
    started: dict[str, float] = {}
    real_load = predict_mod.load_item

    def timed_load(path: str, *a: Any, **k: Any) -> Any:
        started[path] = time.perf_counter()
        return real_load(path, *a, **k)

    variant, mode = _mode(args)  # e.g. "fp32+fulltta", "fp32+fulldecode"
    if mode == "fulldecode":  # the arm without reduced-resolution decoding

        def timed_load(path: str, *a: Any, **k: Any) -> Any:
            started[path] = time.perf_counter()
            return real_load(path, *a, **{**k, "reduce": False})

    predict_mod.load_item = timed_load  # type: ignore[assignment]
    options = PredictOptions(
        formats=frozenset(args.formats.split(",")),
        batch_size=args.batch_size,
        device="cpu",
        threads=args.threads or None,
        read_workers=args.read_workers or None,
        write_workers=args.write_workers or None,
        variant=variant,
    )
    predictor = Predictor(load_bundle(Path(args.bundle)), options)
    if mode == "fulltta":  # the arm without adaptive TTA
        predictor.models.adaptive = False
    latencies: list[float] = []
    rss: dict[str, int] = {}

    def on_record(record: Any) -> None:
        latencies.append(time.perf_counter() - started.get(record.input, time.perf_counter()))
        n = len(latencies)
        if n in (100, len(files)):
            rss[str(n)] = _status_kb("VmRSS")
            rss[f"peak_{n}"] = _status_kb("VmHWM")

    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    summary = predictor.run(files, Path(args.out), on_record=on_record)
    wall = time.perf_counter() - t0
    records = [json.loads(x) for x in (Path(args.out) / "results.jsonl").read_text().splitlines()]
    return {
        "wall_s": wall,
        "cpu_s": _cpu_seconds() - cpu0,
        "studies": len(files),
        "failed": summary.failed,
        "latency_s": latencies,
        "rss_kb": rss,
        "stages_ms": _stage_means(records),
        "gated": sum(bool(r.get("gated")) for r in records),
        "models": predictor.models.variants,
        "decisions": _decisions(records),
        "tta_counts": predictor.models.tta_counts,
    }


def arm_reference(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from export.onnx_export import export_wrapper
    from export.runs import load_run
    from training.torch_backend import TorchModel
    from triage.bundle import load_bundle
    from triage.cascade.items import load_item
    from triage.cascade.models import CascadeModels, normalised_cam
    from triage.cascade.write import error_record, finish_item
    from triage.io.dicom import ReadPolicy
    from triage.outputs.batch import ResultsWriter

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    files = json.loads(Path(args.files).read_text())
    bundle = load_bundle(Path(args.bundle))
    work = Path(args.bundle).parent
    wrapped = {}
    for role in ("classifier", "segmenter"):
        run = load_run(work / f"run-{role}")
        wrapped[role] = TorchModel(*export_wrapper(run))
    models = CascadeModels(bundle, "cpu", backends=wrapped, adaptive=False)  # Algorithm 1: full TTA
    formats = frozenset(args.formats.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    latencies: list[float] = []
    records = []
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    with ResultsWriter(out) as results:
        for start in range(0, len(files), args.batch_size):
            t_batch = time.perf_counter()
            chunk = [load_item(f, bundle, ReadPolicy()) for f in files[start : start + args.batch_size]]
            good = [it for it in chunk if it.error is None]
            if good:
                t1 = time.perf_counter()
                prob, cam = models.gate(np.stack([it.gate_input.x for it in good]), True)  # type: ignore[union-attr]
                t2 = time.perf_counter()
                seg = models.segment(np.stack([it.seg_input.x for it in good]), True)  # type: ignore[union-attr]
                t3 = time.perf_counter()
                cams = normalised_cam(cam) if cam is not None else None
                for i, it in enumerate(good):
                    it.probability, it.gated = float(prob[i]), bool(prob[i] >= bundle.thresholds.gate)
                    it.cam = cams[i] if cams is not None else None
                    it.seg_prob = seg[i] if it.gated else None  # Algorithm 1: blank the mask of negatives
                    it.timings_ms.update(
                        {"gate": 1000 * (t2 - t1) / len(good), "segment": 1000 * (t3 - t2) / len(good)}
                    )
            for it in chunk:
                record = (
                    finish_item(it, bundle, out, formats)
                    if it.error is None
                    else error_record(it, bundle.label)
                )
                results.write(record)
                records.append(json.loads(record.to_json()))
                latencies.append(time.perf_counter() - t_batch)
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "cpu_s": _cpu_seconds() - cpu0,
        "studies": len(files),
        "failed": sum(r["status"] == "error" for r in records),
        "latency_s": latencies,
        "rss_kb": {"peak": _status_kb("VmHWM")},
        "stages_ms": _stage_means(records),
        "gated": sum(bool(r.get("gated")) for r in records),
        "models": {"both": "torch eager fp32"},
        "decisions": _decisions(records),
    }


def arm_floor(args: argparse.Namespace) -> dict[str, Any]:
    from triage.bundle import load_bundle
    from triage.cascade.infer import infer_batch
    from triage.cascade.items import load_item
    from triage.cascade.models import CascadeModels
    from triage.cascade.predict import PredictOptions
    from triage.io.dicom import ReadPolicy

    files = json.loads(Path(args.files).read_text())
    bundle = load_bundle(Path(args.bundle))
    variant, mode = _mode(args)
    models = CascadeModels(bundle, "cpu", args.threads or None, variant=variant, adaptive=mode != "fulltta")
    items = []
    for f in files:  # decoded and prepared beforehand: only the model inputs are kept
        it = load_item(f, bundle, ReadPolicy())
        it.image = None
        items.append(it)
    options = PredictOptions(batch_size=args.batch_size, device="cpu")
    latencies: list[float] = []
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    for start in range(0, len(items), args.batch_size):
        tb = time.perf_counter()
        batch = items[start : start + args.batch_size]
        infer_batch(models, batch, options)
        latencies += [time.perf_counter() - tb] * len(batch)
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "cpu_s": _cpu_seconds() - cpu0,
        "studies": len(files),
        "failed": 0,
        "latency_s": latencies,
        "rss_kb": {"peak": _status_kb("VmHWM")},
        "gated": sum(it.gated for it in items),
        "models": models.variants,
        "decisions": {it.input: [bool(it.gated), None] for it in items},  # no mask decision here
        "tta_counts": models.tta_counts,
    }


ARMS = {"runtime": arm_runtime, "reference": arm_reference, "floor": arm_floor}
