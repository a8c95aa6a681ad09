"""Archive-scale benchmark: local `triage predict` vs `--engine ray` (one machine) vs shards + `triage merge`.

Runs the three arms on the same synthetic studies with a tiny test bundle, so that what is measured is
the engine (reading, writing, scheduling, Ray's start-up and transport), not the models: a conservative
setting for the Ray overhead, which is a smaller share when the models cost more. The arms run
interleaved (their order rotates each round) and repeated, because the machine may be shared; each row
records the load average before and after it. Per run: wall time, throughput, CPU seconds of the whole
process tree (Ray's GCS, raylet and workers included; sampled from /proc every 0.2 s, so a process's last
0.2 s may be missed), the driver's RSS when 100, half and all records were written, and the seconds until
the first record was written (start-up: Ray's, the actors' bundle loading). Prints a table, writes JSON:

    python benchmarks/bench_scale.py --studies 1000 --size 256 --rounds 2 --json bench-scale.json

The capacity projection in docs/scale.md multiplies measured CPU-seconds per study out; it is a
projection, not a measurement of a cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.bundles import build_tiny_bundle
from triage.synth.dataset import SynthRequest, synthesize

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of a live process, from /proc/PID/stat."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK


def _rss_mib(pid: int) -> float | None:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 2**20
    except OSError:
        return None


def _lines(path: Path) -> int:
    try:
        with path.open("rb") as fh:
            return sum(1 for _ in fh)
    except OSError:
        return 0


@dataclass
class Watch:
    """What the /proc sampler saw of one command's process tree."""

    cpu: dict[int, float] = field(default_factory=dict)  # pid → last CPU seconds seen
    rss_at: dict[int, float] = field(default_factory=dict)  # records written → driver RSS MiB then
    first_record: float | None = None
    last_record: float | None = None
    records: int = 0


def _sample(
    root: int, results: Path, watch: Watch, start: float, stop: threading.Event, marks: tuple[int, ...]
) -> None:
    tree = {root}
    while not stop.is_set():
        parents: dict[int, int] = {}
        for name in os.listdir("/proc"):
            if name.isdigit() and (st := _stat(int(name))) is not None:
                parents[int(name)] = st[0]
                if st[0] in tree or int(name) in tree:
                    tree.add(int(name))
                    watch.cpu[int(name)] = st[1]
        for pid, ppid in parents.items():  # grandchildren found in this pass
            if ppid in tree and pid not in tree and (st := _stat(pid)) is not None:
                tree.add(pid)
                watch.cpu[pid] = st[1]
        rss = _rss_mib(root)  # 0 once the driver has exited (a zombie): not a reading
        count = _lines(results)
        now = time.perf_counter() - start
        if count and watch.first_record is None:
            watch.first_record = now
        if count > watch.records:
            watch.records, watch.last_record = count, now
        for mark in marks:
            if count >= mark and mark not in watch.rss_at and rss:
                watch.rss_at[mark] = rss
        stop.wait(0.2)


@dataclass
class Run:
    arm: str
    round: int
    wall_s: float
    cpu_s: float
    studies: int
    load_before: float
    load_after: float
    driver_rss_mib: dict[int, float]  # records written → the driver's RSS then (one job: not for shards)
    first_record_s: float | None

    @property
    def per_s(self) -> float:
        return self.studies / self.wall_s


def _run(cmd: list[str], results: Path, marks: tuple[int, ...] = ()) -> tuple[float, float, Watch]:
    """Run ``cmd``; (wall seconds, CPU seconds of its process tree, what the sampler saw, including the
    driver's RSS when ``results`` reached each of ``marks`` records)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    watch, stop = Watch(), threading.Event()
    sampler = threading.Thread(target=_sample, args=(proc.pid, results, watch, start, stop, marks),
                               daemon=True)
    sampler.start()
    _, err = proc.communicate()
    wall = time.perf_counter() - start
    stop.set()
    sampler.join()
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd[:6])} … failed ({proc.returncode}): {err[-2000:]}")
    return wall, sum(watch.cpu.values()), watch


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None, help="Data and outputs (default: a temp dir).")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    root = args.work or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    synth = root / f"synth-{args.studies}-{args.size}"
    if not (synth / "done").exists():
        synthesize(SynthRequest(synth, studies=args.studies, size=args.size, seed=1), workers=2)
        (synth / "done").write_text("")
    bundle = build_tiny_bundle(root / "bundle", cls_size=128, seg_size=128, gate=0.06)
    manifest = root / "manifest.txt"
    files = sorted((synth / "dicom-images-train").rglob("*.dcm"))
    manifest.write_text("\n".join(map(str, files)) + "\n")
    n = len(files)
    triage = [sys.executable, "-m", "triage.cli.main"]
    base = ["predict", "--files-from", str(manifest), "-m", str(bundle)]
    arms = ["local", "ray (1 machine)", f"{args.shards} shards + merge"]
    runs: list[Run] = []
    for rnd in range(args.rounds):
        for arm in arms[rnd % len(arms):] + arms[: rnd % len(arms)]:
            out = root / f"r{rnd}-{arm.split()[0]}"
            load_before = os.getloadavg()[0]
            marks = (100, n // 2, n)
            if arm == "local":
                wall, cpu, watch = _run([*triage, *base, "-o", str(out)], out / "results.jsonl", marks)
            elif arm.startswith("ray"):
                cmd = [*triage, *base, "-o", str(out), "--engine", "ray", "--address", "local"]
                wall, cpu, watch = _run(cmd, out / "results.jsonl", marks)
            else:  # one shard after another: each shard job takes the whole machine
                wall, cpu, watch = 0.0, 0.0, Watch()
                for k in range(args.shards):
                    part = out / f"s{k}"
                    w, c, _ = _run([*triage, *base, "-o", str(part), "--shard", f"{k}/{args.shards}"],
                                         part / "results.jsonl")
                    wall, cpu = wall + w, cpu + c
                parts = [str(out / f"s{k}") for k in range(args.shards)]
                w, c, _ = _run([*triage, "merge", *parts, "-o", str(out)], out / "results.jsonl")
                wall, cpu = wall + w, cpu + c
            merged = _lines(out / "results.jsonl")
            if merged != n:
                raise SystemExit(f"{arm}: {merged} records for {n} studies")
            run = Run(arm, rnd, wall, cpu, n, load_before, os.getloadavg()[0], watch.rss_at,
                      watch.first_record)
            runs.append(run)
            print(f"round {rnd} {arm:<20} {wall:7.1f} s {run.per_s:6.2f}/s  CPU {cpu:7.1f} s  "
                  f"load {run.load_before:.1f}→{run.load_after:.1f}", flush=True)
    local = statistics.median(r.per_s for r in runs if r.arm == "local")
    print(f"\n{n} studies, {args.size} px, tiny bundle, {args.rounds} rounds interleaved; "
          f"load average {min(r.load_before for r in runs):.1f}–{max(r.load_after for r in runs):.1f}")
    head = ["arm", "studies/s (median)", "vs local", "runs", "first record s", "CPU s/study",
            f"driver MiB @100→{n // 2}→{n}"]
    print(" | ".join(head))
    summary = {}
    for arm in arms:
        mine = [r for r in runs if r.arm == arm]
        rate = statistics.median(r.per_s for r in mine)
        first = [r.first_record_s for r in mine if r.first_record_s is not None]
        cpu = statistics.median(r.cpu_s / r.studies for r in mine)
        rss_text = ", ".join("→".join(f"{r.driver_rss_mib[m]:.0f}" for m in sorted(r.driver_rss_mib)) or "-"
                             for r in mine)
        each = ", ".join(f"{r.per_s:.2f}" for r in mine)
        first_text = f"{statistics.median(first):.1f}" if first else "-"
        print(f"{arm} | {rate:.2f} | {rate / local:.0%} | {each} | {first_text} | {cpu:.3f} | {rss_text}")
        summary[arm] = {"studies_per_s": rate, "ratio_to_local": rate / local, "cpu_s_per_study": cpu,
                        "first_record_s": statistics.median(first) if first else None}
    if args.json is not None:
        args.json.write_text(json.dumps({
            "studies": n, "size": args.size, "rounds": args.rounds, "cpus": os.cpu_count(),
            "summary": summary, "runs": [asdict(r) | {"studies_per_s": r.per_s} for r in runs],
        }, indent=1) + "\n")


if __name__ == "__main__":
    main()
