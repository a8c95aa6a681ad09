"""Throughput and memory of `triage watch` against `triage predict` on the same studies: prints a table
and writes JSON.

Both run as their own processes with the same bundle, outputs (png, seg, sc, sr) and threads:

  predict  `triage predict IN --out OUT`; seconds = the batch's own time from its summary table
           (after start-up and model loading), wall = the whole process.
  watch    `triage watch IN --out OUT`, started first and idle; then all studies arrive at once (one
           rename of a folder into IN); seconds = from that rename until the last study is committed in
           the job store, minus the quiet period (a deliberate wait, not work), wall = the same without
           subtracting it.

CPU seconds and peak resident memory come from each process's rusage (the watcher's include its
start-up and idle time). The goal in issue 7: the watcher's throughput within 20% of predict's, with
bounded memory.

Usage:  python benchmarks/bench_service.py [--studies 500] [--size 256] [--quiet 2] [--rounds 3]
                                           [--model BUNDLE] [--json out.json] [--workdir DIR]
Without --model a tiny test bundle is built (tests/bundles.py; needs the onnx package).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _triage(*args: object, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "wb") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "triage.cli.main", *map(str, args)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )


def _reap(proc: subprocess.Popen[bytes]) -> dict[str, float]:
    """Wait for ``proc``; its exit status, CPU seconds and peak RSS (MB) from rusage."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "rc": proc.returncode,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,
    }


def _done(db: Path) -> int:
    if not db.exists():
        return 0
    con = sqlite3.connect(db, timeout=30)
    try:
        return int(
            con.execute("SELECT count(*) FROM jobs WHERE state IN ('done', 'quarantined')").fetchone()[0]
        )
    except sqlite3.OperationalError:
        return 0
    finally:
        con.close()


def run_predict(studies: Path, bundle: Path, out: Path, threads: int) -> dict[str, Any]:
    log = out.parent / "predict.log"
    start = time.perf_counter()
    proc = _triage(
        "predict",
        studies,
        "--model",
        bundle,
        "--out",
        out,
        "--format",
        "png,seg,sc,sr",
        "--threads",
        threads,
        log=log,
    )
    usage = _reap(proc)
    wall = time.perf_counter() - start
    text = log.read_text(errors="replace")
    match = re.search(r"time\s*│?\s*([0-9.]+) s", text)
    if usage["rc"] != 0 or match is None:
        raise SystemExit(f"triage predict failed (rc {usage['rc']}):\n{text[-3000:]}")
    return {"seconds": float(match.group(1)), "wall_s": wall, **usage}


def run_watch(studies: Path, bundle: Path, work: Path, threads: int, quiet: float, n: int) -> dict[str, Any]:
    inp, out = work / "in", work / "watch-out"
    inp.mkdir()
    proc = _triage(
        "watch",
        inp,
        "--out",
        out,
        "--model",
        bundle,
        "--format",
        "png,seg,sc,sr",
        "--threads",
        threads,
        "--quiet-seconds",
        quiet,
        "--http-port",
        0,
        "--min-free-mb",
        1,
        log=work / "watch.log",
    )
    db = out / "jobs.sqlite3"
    deadline = time.monotonic() + 120
    while "service_started" not in (work / "watch.log").read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"triage watch did not start:\n{(work / 'watch.log').read_text()[-3000:]}")
        time.sleep(0.1)
    drop = time.perf_counter()
    os.rename(studies, inp / "drop")
    while _done(db) < n:
        if proc.poll() is not None:
            raise SystemExit(f"triage watch exited:\n{(work / 'watch.log').read_text()[-3000:]}")
        time.sleep(0.05)
    wall = time.perf_counter() - drop
    proc.send_signal(signal.SIGTERM)
    usage = _reap(proc)
    os.rename(inp / "drop", studies)
    return {"seconds": wall - quiet, "wall_s": wall, **usage}


def _median(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median ``seconds`` (its other numbers with it), plus every run's seconds."""
    ordered = sorted(results, key=lambda r: r["seconds"])
    return {**ordered[len(ordered) // 2], "all_seconds": [round(r["seconds"], 2) for r in results]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--studies", type=int, default=500)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--quiet", type=float, default=2.0, help="the watcher's --quiet-seconds")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0 = all cores)")
    parser.add_argument("--model", type=Path, help="bundle folder; default: a tiny test bundle")
    parser.add_argument(
        "--rounds", type=int, default=1, help="alternating runs of both; medians are reported"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--workdir", type=Path, help="keep the work here instead of a temporary folder")
    args = parser.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-service-"))
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    from triage.synth.dataset import SynthRequest, synthesize

    bundle = args.model
    if bundle is None:
        from tests.bundles import build_tiny_bundle

        bundle = build_tiny_bundle(work / "bundle", cls_size=64, seg_size=64, gate=0.3, with_saliency=True)
    print(f"synthesizing {args.studies} studies at {args.size} px into {work} ...", flush=True)
    synthesize(SynthRequest(work / "synth", studies=args.studies, size=args.size, seed=1))
    studies = work / "synth" / "dicom-images-train"

    runs: dict[str, list[dict[str, Any]]] = {"predict": [], "watch": []}
    for n in range(args.rounds):  # alternate, so that a change in the machine's load hits both
        for sub in ("predict-out", "in", "watch-out"):
            shutil.rmtree(work / sub, ignore_errors=True)
        runs["predict"].append(run_predict(studies, bundle, work / "predict-out", args.threads))
        runs["watch"].append(run_watch(studies, bundle, work, args.threads, args.quiet, args.studies))
        print(
            f"round {n + 1}: predict {runs['predict'][-1]['seconds']:.1f} s,"
            f" watch {runs['watch'][-1]['seconds']:.1f} s",
            flush=True,
        )
    rows = {name: _median(results) for name, results in runs.items()}
    ratio = (args.studies / rows["watch"]["seconds"]) / (args.studies / rows["predict"]["seconds"])
    print()
    print(
        f"{args.studies} studies, {args.size} px, {os.cpu_count()} cores ({platform.processor() or 'cpu'}),"
        f" quiet period {args.quiet:g} s, median of {args.rounds} round(s)"
    )
    print(f"{'':8} {'seconds':>8} {'studies/s':>10} {'wall s':>8} {'CPU s':>7} {'peak RSS MB':>12}")
    for name, r in rows.items():
        print(
            f"{name:8} {r['seconds']:8.1f} {args.studies / r['seconds']:10.1f} {r['wall_s']:8.1f}"
            f" {r['cpu_s']:7.1f} {r['peak_rss_mb']:12.0f}"
        )
    print(f"watch / predict throughput: {ratio:.2f} (goal: at least 0.80)")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "studies": args.studies,
                    "size": args.size,
                    "quiet_s": args.quiet,
                    "cores": os.cpu_count(),
                    "ratio": ratio,
                    **rows,
                },
                indent=2,
            )
            + "\n"
        )
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
