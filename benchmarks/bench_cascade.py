"""End-to-end speed of the cascade on 2048² studies, side by side in one run: prints a table, writes JSON.

Arms (each in its own process, so that peak RSS and CPU time are its own):

* ``runtime``   this runtime end to end: files in → results.jsonl and outputs written (``Predictor``:
  decode/preprocess threads, gated ONNX Runtime calls, writer threads, bounded queues), as shipped:
  adaptive TTA when the bundle's card has a margin, reduced-resolution decode of compressed images;
* ``reference`` the thesis's Algorithm 1 in PyTorch eager: both models on every image with full TTA,
  masks of classifier-negative images blanked afterwards; the same reading at full resolution
  (``load_item``) and writing (``finish_item``, ``ResultsWriter``), one batch after the other;
* ``floor``     the model-only floor: the runtime's gated model calls (``infer_batch``: ONNX Runtime, TTA,
  CAM, segmenter on the gated images) on tensors decoded and prepared beforehand.

``--variants`` / ``--j2k-variants`` name the runtime's (and floor's) model variant, optionally with a mode
that switches one speed change off: ``fp32+fulltta`` (no adaptive TTA), ``fp32+fulldecode`` (no
reduced-resolution decode). Decision changes are counted per arm against the reference on the same
inputs: the gate decision and the final one (positive = gated with a non-empty mask).

Models: ``--trained DIR`` takes a trained bundle and its runs (``DIR/bundle``, ``DIR/runs/{classifier,
segmenter}``; the reference wraps the runs' PyTorch networks), so that decision changes are real.
Without it, the seed architecture (timm resnext50_32x4d at 224 → logit + CAM; smp Unet resnet34 at 256)
with random weights, exported by ``triage export``, the gate threshold at the 78th percentile of the
classifier's probabilities on the set (~22 % of images reach the segmenter): for speed only. Data:
``triage synth --size 2048 --positive-fraction 0.22`` (uncompressed, and JPEG 2000 lossless).

Latency per study = when its record was written − when its file started being read (for the floor: the
end − the start of its batch). RSS: peak (VmHWM) of the arm's process; the runtime also runs a long pass
over ``--long`` studies (the set cycled through hard links) and reports RSS after 100 and after ``--long``.
``--repeat N`` runs every arm N times, alternating the order; the best is kept and the spread printed, with
the load average before each run (the machine may be shared).

Usage:  python benchmarks/bench_cascade.py [--studies 100] [--long 1000] [--json bench.json]
        [--formats seg] [--compression none,j2k] [--variants fp32,fp32+fulltta,int8]
        [--j2k-variants fp32,fp32+fulldecode] [--trained DIR] [--repeat 2] [--work /tmp/triage-bench]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cascade_arms import ARMS, STAGES, make_bundle, make_data, study_files  # noqa: E402  (benchmarks/ on sys.path)

# -------------------------------------------------------------------------------------------- driver


def run_arm(
    name: str, files: list[str], bundle: Path, work: Path, tag: str, args: argparse.Namespace, variant: str
) -> dict[str, Any]:
    listing = work / f"files-{tag}.json"
    listing.write_text(json.dumps(files))
    out = work / f"out-{tag}"
    shutil.rmtree(out, ignore_errors=True)
    result = work / f"result-{tag}.json"
    cmd = [
        sys.executable,
        __file__,
        "--arm",
        name,
        "--files",
        str(listing),
        "--bundle",
        str(bundle),
        "--out",
        str(out),
        "--result",
        str(result),
        "--formats",
        args.formats,
        "--batch-size",
        str(args.batch_size),
        "--threads",
        str(args.threads),
        "--read-workers",
        str(args.read_workers),
        "--write-workers",
        str(args.write_workers),
        "--variant",
        variant,
    ]
    print(f"  running {tag} ({len(files)} studies)", flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    data: dict[str, Any] = json.loads(result.read_text())
    shutil.rmtree(out, ignore_errors=True)
    return data


def summarise(r: dict[str, Any]) -> dict[str, Any]:
    lat = np.asarray(r["latency_s"])
    peak = r["rss_kb"].get("peak") or max(
        (v for k, v in r["rss_kb"].items() if k.startswith("peak")), default=0
    )
    return {
        "studies_per_s": r["studies"] / r["wall_s"],
        "p50_s": float(np.percentile(lat, 50)),
        "p95_s": float(np.percentile(lat, 95)),
        "peak_rss_mb": peak / 1024,
        "wall_s": r["wall_s"],
        "cpu_s": r["cpu_s"],
        "gated": r["gated"],
        "studies": r["studies"],
        "failed": r["failed"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--studies", type=int, default=100)
    parser.add_argument(
        "--first", type=int, default=0, help="run the arms on the first N studies of the set only (0: all)"
    )
    parser.add_argument(
        "--long", type=int, default=1000, help="studies in the runtime's memory pass (0: skip)"
    )
    parser.add_argument("--compression", default="none,j2k")
    parser.add_argument("--formats", default="seg", help="outputs written by runtime and reference")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--read-workers", type=int, default=0)
    parser.add_argument("--write-workers", type=int, default=0)
    parser.add_argument("--arms", default="runtime,reference,floor")
    parser.add_argument("--variants", default="fp32", help="model variants for runtime and floor: fp32,int8")
    parser.add_argument("--j2k-variants", default="fp32", help="variants of the runtime on JPEG 2000 inputs")
    parser.add_argument("--repeat", type=int, default=1, help="runs per arm, alternating order; best kept")
    parser.add_argument("--work", type=Path, default=Path("/tmp/triage-bench"))
    parser.add_argument(
        "--trained",
        type=Path,
        default=None,
        help="folder with bundle/ and runs/{classifier,segmenter}/ (tools/demo.sh's layout): a trained "
        "bundle instead of the random-weight seed architecture, so that decision changes are real",
    )
    parser.add_argument("--json", type=Path, default=None)
    # internal: one arm in a subprocess
    parser.add_argument("--arm", choices=sorted(ARMS), help=argparse.SUPPRESS)
    parser.add_argument("--files", help=argparse.SUPPRESS)
    parser.add_argument("--bundle", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="fp32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        Path(args.result).write_text(json.dumps(ARMS[args.arm](args)))
        return

    args.work.mkdir(parents=True, exist_ok=True)
    t_all, cpu_children0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    load0 = os.getloadavg()
    print(
        f"bench_cascade: {args.studies} studies at 2048², compression {args.compression}, "
        f"{len(os.sched_getaffinity(0))} cores, load average {load0[0]:.2f}",
        flush=True,
    )
    datasets = {c: make_data(args.work, args.studies, c) for c in args.compression.split(",")}
    if args.trained:  # a trained bundle and its runs (the reference wraps the runs' PyTorch networks)
        bundle = args.work / "trained" / "bundle"
        shutil.rmtree(bundle.parent, ignore_errors=True)
        shutil.copytree(args.trained / "bundle", bundle)
        for role in ("classifier", "segmenter"):
            (bundle.parent / f"run-{role}").symlink_to((args.trained / "runs" / role).resolve())
    else:
        bundle = make_bundle(args.work, next(iter(datasets.values())))
    arms = args.arms.split(",")
    variants = args.variants.split(",")
    plan: list[tuple[str, str, str, list[str]]] = []  # (tag, arm, variant, files)
    for comp, data in datasets.items():
        for arm in arms:
            chosen = variants if comp == "none" else args.j2k_variants.split(",")
            for variant in chosen if arm != "reference" else ["torch"]:
                if arm == "floor" and (comp != next(iter(datasets)) or variant.endswith("+fulldecode")):
                    continue  # decoded tensors: the same for every compression and decode mode
                suffix = "" if variant in ("fp32", "torch") else f"-{variant}"
                tag = f"floor{suffix}" if arm == "floor" else f"{arm}-{comp}{suffix}"
                plan.append((tag, arm, variant, study_files(data)[: args.first or None]))
    results: dict[str, dict[str, Any]] = {}
    raw: dict[str, Any] = {}
    runs: dict[str, list[dict[str, Any]]] = {}
    for rep in range(args.repeat):
        for tag, arm, variant, files in plan if rep % 2 == 0 else reversed(plan):
            load = os.getloadavg()[0]
            result = run_arm(arm, files, bundle, args.work, tag, args, variant)
            runs.setdefault(tag, []).append({**summarise(result), "load1_before": load})
            if tag not in raw or summarise(result)["studies_per_s"] > results[tag]["studies_per_s"]:
                raw[tag], results[tag] = result, summarise(result)
    if args.long and "runtime" in arms:
        files = study_files(datasets.get("none") or next(iter(datasets.values())))[: args.first or None]
        links = args.work / "long"
        shutil.rmtree(links, ignore_errors=True)
        links.mkdir()
        cycled = []
        for i in range(args.long):
            link = links / f"{i:05d}.dcm"  # a hard link: the runtime de-duplicates inputs by real path
            os.link(files[i % len(files)], link)
            cycled.append(str(link))
        raw["runtime-long"] = run_arm("runtime", cycled, bundle, args.work, "runtime-long", args, variants[0])
        results["runtime-long"] = summarise(raw["runtime-long"])
        shutil.rmtree(links, ignore_errors=True)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    report = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": len(os.sched_getaffinity(0)),
            "load_average_start": load0,
            "load_average_end": os.getloadavg(),
        },
        "args": {k: str(v) for k, v in vars(args).items() if v is not None},
        "results": results,
        "all_runs": runs,
        "stages_ms": {k: v.get("stages_ms") for k, v in raw.items()},
        "rss_kb": {k: v["rss_kb"] for k, v in raw.items()},
        "decision_changes": _decision_changes(raw, next(iter(datasets))),
        "tta_counts": {k: v.get("tta_counts") for k, v in raw.items() if v.get("tta_counts")},
        "models": {k: v["models"] for k, v in raw.items()},
        "total": {
            "wall_s": time.perf_counter() - t_all,
            "cpu_s_children": children.ru_utime
            + children.ru_stime
            - cpu_children0.ru_utime
            - cpu_children0.ru_stime,
        },
    }
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def _decision_changes(raw: dict[str, Any], first: str) -> dict[str, dict[str, Any]]:
    """Per arm: images whose gate decision / final (positive) decision differs from the reference's on
    the same inputs (the reference: PyTorch eager, full TTA, full decode). The floor has no mask decision
    (positive: None); the memory pass cycles the inputs and is left out."""
    out = {}
    for tag, r in raw.items():
        if tag == "runtime-long" or tag.startswith("reference") or "decisions" not in r:
            continue
        comp = first if tag.startswith("floor") else tag.removeprefix("runtime-").partition("-")[0]
        ref = raw.get(f"reference-{comp}", {}).get("decisions")
        if not ref:
            continue
        mine = r["decisions"]
        common = [k for k in ref if k in mine]
        positive = [k for k in common if mine[k][1] is not None]
        out[tag] = {
            "images": len(common),
            "gate": sum(ref[k][0] != mine[k][0] for k in common),
            "positive": sum(ref[k][1] != mine[k][1] for k in positive) if positive else None,
        }
    return out


GOALS = {"none": 5.0, "j2k": 3.0}  # × the reference end to end (issue 16)


def print_report(report: dict[str, Any]) -> None:
    res, changes = report["results"], report.get("decision_changes", {})
    head = (
        "arm",
        "studies/s",
        "spread",
        "p50 s",
        "p95 s",
        "RSS MB",
        "wall s",
        "CPU s",
        "gated",
        "Δgate",
        "Δpos",
    )
    print("\n" + f"{head[0]:<28}" + "".join(f"{h:>10}" for h in head[1:]))
    for tag, r in res.items():
        rates = [x["studies_per_s"] for x in report["all_runs"].get(tag, [])]
        ch = changes.get(tag, {})
        cells = (
            f"{r['studies_per_s']:.2f}",
            f"{(max(rates) - min(rates)) / max(rates):.0%}" if len(rates) > 1 else "-",
            f"{r['p50_s']:.2f}",
            f"{r['p95_s']:.2f}",
            f"{r['peak_rss_mb']:.0f}",
            f"{r['wall_s']:.1f}",
            f"{r['cpu_s']:.1f}",
            f"{r['gated']}/{r['studies']}",
            "-" if not ch else f"{ch['gate']}",
            "-" if not ch or ch["positive"] is None else f"{ch['positive']}",
        )
        print(f"{tag:<28}" + "".join(f"{c:>10}" for c in cells))
    print(
        "(studies/s: best of the repeats; spread: (best - worst) / best over them; Δgate / Δpos: images "
        "whose gate / positive decision differs from the reference's on the same inputs)\n"
    )
    for tag, rt in res.items():
        if not tag.startswith("runtime-") or tag == "runtime-long":
            continue
        comp, _, variant = tag.removeprefix("runtime-").partition("-")
        ref = res.get(f"reference-{comp}")
        floor = res.get("floor" + (f"-{variant}" if variant else ""))
        line = f"{tag}:"
        if ref:
            line += f" {rt['studies_per_s'] / ref['studies_per_s']:.2f}x the reference"
            line += f" (goal >= {GOALS[comp]:g}x);" if comp in GOALS else ";"
        if floor:
            line += f" {rt['studies_per_s'] / floor['studies_per_s']:.0%} of the model-only floor"
        counts = report.get("tta_counts", {}).get(tag)
        if counts and counts["images"]:
            line += f"; gate TTA on {counts['full_tta']}/{counts['images']} images"
        print(line)
    long = report["rss_kb"].get("runtime-long")
    if long:
        n = max(int(k) for k in long if k.isdigit())
        growth = long[f"peak_{n}"] / long["peak_100"] - 1
        print(
            f"memory: peak RSS after 100 studies {long['peak_100'] / 1024:.0f} MB, after {n} "
            f"{long[f'peak_{n}'] / 1024:.0f} MB ({growth:+.1%}; goal <= +10%); current RSS "
            f"{long['100'] / 1024:.0f} -> {long[str(n)] / 1024:.0f} MB"
        )
    print(
        "\nper-stage mean ms per image (results.jsonl timings_ms; wall time inside each stage): "
        + ", ".join(STAGES)
    )
    for tag, stages in report["stages_ms"].items():
        if stages:
            print(f"  {tag:<20} " + "  ".join(f"{s} {stages.get(s, 0.0):6.1f}" for s in STAGES))
    total, machine = report["total"], report["machine"]
    print(
        f"\ntotal wall {total['wall_s']:.0f} s, CPU of the arms {total['cpu_s_children']:.0f} s; load avg "
        f"{machine['load_average_start'][0]:.2f} at start, {machine['load_average_end'][0]:.2f} at end"
    )


if __name__ == "__main__":
    main()
