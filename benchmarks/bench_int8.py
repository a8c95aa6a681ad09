"""INT8 vs FP32 on the CPU: speed and the metric change (classifier AUC, cascade Dice per image), honestly.

Needs trained runs: ``--runs CLASSIFIER_RUN SEGMENTER_RUN`` (what ``triage train`` writes), or
``--quick-train``, which trains small stand-ins here (timm resnet10t classifier, smp Unet resnet18,
128 px, BCE / BCE + Dice, Adam, batches of 8, a few epochs on synthetic studies: NOT the project's
training pipeline, only enough signal that AUC and Dice mean something). Then:

1. ``triage export RUNS --int8`` (calibration: its default synthetic set), falling back to a direct
   quantisation when the INT8 parity check refuses the variant (the refusal is reported);
2. on a held-out synthetic test set (other seed, 22 % positive), through the runtime's own code
   (read → preprocess → gate with TTA → segmenter on the gated images → triplet → source grid):
   AUC of P(pneumothorax), Dice per image of the cascade's masks (empty vs empty = 1), sensitivity and
   specificity at the gate, for the FP32 and the INT8 variant;
3. speed: ms per image of each graph, FP32 vs INT8, batch 8, best of 3, on this machine.

Usage:  python benchmarks/bench_int8.py --quick-train [--epochs 6] [--json out.json]
        python benchmarks/bench_int8.py --runs RUN_CLS RUN_SEG
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZE = 128


def synth(folder: Path, studies: int, seed: int, positive: float, size: int = 256) -> Path:
    from triage.synth.dataset import SynthRequest, synthesize

    if not (folder / "metadata.csv").exists():
        synthesize(SynthRequest(folder, studies, positive, size, seed), workers=len(os.sched_getaffinity(0)))
    return folder


def _labelled(data: Path) -> list[tuple[str, int, Path]]:
    from triage.synth.dataset import read_metadata

    return [(str(data / r["dicom"]), int(r["label"]), data / r["mask"]) for r in read_metadata(data)]


def quick_train(work: Path, epochs: int) -> tuple[Path, Path]:
    """Small stand-in runs trained on synthetic studies (see the module docstring)."""
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    from training.models import ArchSpec, build_model
    from training.run_format import RunCard, write_run_card
    from triage.bundle import ModelSpec, Normalization
    from triage.cascade.items import prepare
    from triage.io.dicom import ReadPolicy, read_image

    torch.manual_seed(0)
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    data = synth(work / "train", 400, 101, 0.5)
    norm = {"kind": "meanstd", "mean": [0.5], "std": [0.25]}
    spec = ModelSpec(
        "classifier",
        Path("x"),
        "onnx",
        "",
        "image",
        (SIZE, SIZE),
        1,
        "letterbox",
        Normalization("meanstd", (0.5,), (0.25,)),
        {},
    )
    xs, ys, ms = [], [], []
    for dicom, label, mask_path in _labelled(data):
        img = read_image(Path(dicom), ReadPolicy())
        prep = prepare(img.pixels, spec)
        xs.append(prep.x)
        ys.append(label)
        mask = np.asarray(Image.open(mask_path).resize((SIZE, SIZE), Image.Resampling.BILINEAR)) >= 128
        ms.append(mask[None].astype(np.float32))
    x, y, m = (
        torch.from_numpy(np.stack(xs)),
        torch.tensor(ys, dtype=torch.float32),
        torch.from_numpy(np.stack(ms)),
    )
    runs = []
    for role, arch in (
        ("classifier", ArchSpec("classifier", "resnet10t")),
        ("segmenter", ArchSpec("segmenter", "resnet18")),
    ):
        model = build_model(arch)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        idx = torch.arange(len(x)) if role == "classifier" else torch.nonzero(y > 0).flatten()
        t0 = time.perf_counter()
        for epoch in range(epochs):
            model.train()
            perm = idx[torch.randperm(len(idx))]
            total = 0.0
            for start in range(0, len(perm), 8):
                b = perm[start : start + 8]
                xb = x[b]
                if torch.rand(()) < 0.5:
                    xb, mb = xb.flip(-1), m[b].flip(-1)
                else:
                    mb = m[b]
                out = model(xb)
                if role == "classifier":
                    loss = torch.nn.functional.binary_cross_entropy_with_logits(out.reshape(-1), y[b])
                else:
                    p = torch.sigmoid(out)
                    dice = 1 - (2 * (p * mb).sum((1, 2, 3)) + 1) / (p.sum((1, 2, 3)) + mb.sum((1, 2, 3)) + 1)
                    loss = torch.nn.functional.binary_cross_entropy_with_logits(out, mb) + dice.mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(b)
            print(
                f"  quick-train {role} epoch {epoch + 1}/{epochs}: loss {total / len(perm):.3f} "
                f"({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
        model.eval()
        run = work / f"run-{role}"
        run.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run / "best.safetensors"))
        thresholds = (
            {"gate": 0.5}
            if role == "classifier"
            else {"top": 0.5, "min_area": 10, "bottom": 0.4, "min_component": 4}
        )
        thresholds["chosen_by"] = {"data": "none", "metric": "fixed for bench_int8.py --quick-train"}
        write_run_card(
            run,
            RunCard(
                role=role,
                arch=arch,
                input_size=(SIZE, SIZE),
                normalization=norm,
                thresholds=thresholds,
                provenance={"kind": "bench_int8 quick-train", "epochs": epochs, "images": len(idx)},
            ),
        )
        runs.append(run)
    return runs[0], runs[1]


def export(work: Path, runs: tuple[Path, Path]) -> tuple[Path, str]:
    from export.errors import ExportError
    from export.pipeline import ExportOptions, export_bundle

    bundle = work / "bundle"
    note = "triage export --int8: parity passed"
    try:
        export_bundle(list(runs), ExportOptions(out=bundle, int8=True, int8_default="fp32", force=True))
    except ExportError as exc:
        note = (
            f"triage export --int8 refused the INT8 variant ({exc}); quantised directly for this comparison"
        )
        export_bundle(list(runs), ExportOptions(out=bundle, force=True))
        import tempfile

        from export.images import SYNTHETIC_CALIBRATION, image_set
        from export.quantize import quantize
        from triage.bundle import load_bundle, seal

        b = load_bundle(bundle)
        with tempfile.TemporaryDirectory() as tmp:
            calib = image_set(None, b, Path(tmp), what="calibration folder", defaults=SYNTHETIC_CALIBRATION)
            card = json.loads((bundle / "card.json").read_text())
            for role, entry in card["models"].items():
                file = entry["file"].replace(".onnx", ".int8.onnx")
                quantize(bundle / entry["file"], bundle / file, "image", calib.batches(role), role)
                entry["variants"] = {"int8": {"file": file, "runtime": "onnx", "precision": "int8"}}
            (bundle / "card.json").write_text(json.dumps(card, indent=2))
            seal(bundle)
    return bundle, note


def evaluate(bundle_path: Path, test: Path, variant: str) -> dict[str, Any]:
    from PIL import Image
    from sklearn.metrics import roc_auc_score

    from triage.bundle import load_bundle
    from triage.cascade.items import load_item
    from triage.cascade.models import CascadeModels
    from triage.cascade.postprocess import triplet_mask
    from triage.cascade.preprocess import to_source
    from triage.io.dicom import ReadPolicy

    bundle = load_bundle(bundle_path)
    models = CascadeModels(bundle, "cpu", variant=variant)
    rows = _labelled(test)
    probs, dices, labels = [], [], []
    for start in range(0, len(rows), 8):
        chunk = rows[start : start + 8]
        items = [load_item(d, bundle, ReadPolicy()) for d, _, _ in chunk]
        prob, _ = models.gate(np.stack([it.gate_input.x for it in items]), True)  # type: ignore[union-attr]
        gated = [i for i, p in enumerate(prob) if p >= bundle.thresholds.gate]
        seg = models.segment(np.stack([items[i].seg_input.x for i in gated]), True) if gated else []  # type: ignore[union-attr]
        maps = dict(zip(gated, seg, strict=True))
        for i, (it, (_, label, mask_path)) in enumerate(zip(items, chunk, strict=True)):
            truth = np.asarray(Image.open(mask_path)) >= 128
            pred = np.zeros(truth.shape, bool)
            if i in maps:
                grid = triplet_mask(maps[i], bundle.thresholds)
                if grid.any():
                    pred = to_source(grid.astype(np.float32), it.seg_input.geometry) >= 0.5  # type: ignore[union-attr]
            total = int(truth.sum() + pred.sum())
            dices.append(1.0 if total == 0 else 2 * int((truth & pred).sum()) / total)
            probs.append(float(prob[i]))
            labels.append(label)
    p, y = np.asarray(probs), np.asarray(labels)
    decided = p >= bundle.thresholds.gate
    return {
        "variant": variant,
        "images": len(y),
        "positives": int(y.sum()),
        "auc": float(roc_auc_score(y, p)),
        "dice_per_image": float(np.mean(dices)),
        "sensitivity": float(decided[y == 1].mean()),
        "specificity": float((~decided[y == 0]).mean()),
        "probabilities": probs,
    }


def speed(bundle_path: Path, test: Path) -> dict[str, Any]:
    from export.quantize import time_model
    from triage.bundle import load_bundle
    from triage.cascade.items import load_item
    from triage.io.dicom import ReadPolicy

    bundle = load_bundle(bundle_path)
    items = [load_item(d, bundle, ReadPolicy()) for d, _, _ in _labelled(test)[:8]]
    out = {}
    threads = len(os.sched_getaffinity(0))
    for role in ("classifier", "segmenter"):
        spec = getattr(bundle, role)
        x = np.stack([(it.gate_input if role == "classifier" else it.seg_input).x for it in items])  # type: ignore[union-attr]
        fp32 = time_model(spec.path, "image", x, threads=threads)
        int8 = time_model(spec.variants["int8"].path, "image", x, threads=threads)
        out[role] = {"fp32_ms": fp32, "int8_ms": int8, "speedup": fp32 / int8}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", nargs=2, type=Path, metavar=("CLASSIFIER_RUN", "SEGMENTER_RUN"))
    parser.add_argument("--quick-train", action="store_true")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--test-studies", type=int, default=200)
    parser.add_argument("--work", type=Path, default=Path("/tmp/triage-bench-int8"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not args.runs and not args.quick_train:
        parser.error("pass --runs CLASSIFIER_RUN SEGMENTER_RUN or --quick-train")
    args.work.mkdir(parents=True, exist_ok=True)
    t0, load = time.perf_counter(), os.getloadavg()
    runs = tuple(args.runs) if args.runs else quick_train(args.work, args.epochs)
    bundle, note = export(args.work, runs)  # type: ignore[arg-type]
    test = synth(args.work / "test", args.test_studies, 202, 0.22)
    results = {v: evaluate(bundle, test, v) for v in ("fp32", "int8")}
    fast = speed(bundle, test)
    a, b = results["fp32"], results["int8"]
    flips = int(np.sum((np.asarray(a["probabilities"]) >= 0.5) != (np.asarray(b["probabilities"]) >= 0.5)))
    print(f"\n{note}")
    print(f"held-out synthetic test set: {a['images']} images, {a['positives']} positive (256 px)")
    print(f"{'variant':<8} {'AUC':>7} {'Dice/img':>9} {'sens':>6} {'spec':>6}")
    for r in (a, b):
        print(
            f"{r['variant']:<8} {r['auc']:>7.4f} {r['dice_per_image']:>9.4f} {r['sensitivity']:>6.3f} "
            f"{r['specificity']:>6.3f}"
        )
    print(
        f"change   {b['auc'] - a['auc']:>+7.4f} {b['dice_per_image'] - a['dice_per_image']:>+9.4f}; "
        f"gate decisions that differ: {flips}"
    )
    for role, s in fast.items():
        print(
            f"speed {role:<10} fp32 {s['fp32_ms']:.1f} ms/img, int8 {s['int8_ms']:.1f} ms/img: "
            f"{s['speedup']:.2f}x"
        )
    print(
        f"wall {time.perf_counter() - t0:.0f} s; load average {load[0]:.2f} at start, "
        f"{os.getloadavg()[0]:.2f} at end"
    )
    if args.json:
        for r in results.values():
            r.pop("probabilities")
        args.json.write_text(
            json.dumps(
                {
                    "note": note,
                    "results": results,
                    "speed": fast,
                    "gate_flips": flips,
                    "runs": [str(r) for r in runs],
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
