"""The bodies of `triage predict` (progress bar, summary table, exit status: 0 ok, 1 any failed, 2 usage) and
`triage merge`."""

from __future__ import annotations

import logging
import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from triage.bundle import load_bundle
from triage.cascade.predict import PredictOptions, Summary, predict
from triage.cli.console import err_console
from triage.errors import TriageError
from triage.io.manifest import Shard, read_manifest
from triage.outputs.merge import MergeError, merge_outputs
from triage.scale.ray_engine import RayOptions


def _summary_table(summary: Summary, out: Path) -> Table:
    ok = [r for r in summary.records if r.status == "ok"]
    positives = [r for r in ok if r.positive]
    table = Table(title=f"triage predict → {out}", show_header=False)
    table.add_row("images processed", str(len(ok)))
    table.add_row("positive (flagged)", str(len(positives)))
    table.add_row("gated to the segmenter", str(sum(bool(r.gated) for r in ok)))
    table.add_row("failed", str(summary.failed))
    for code, n in sorted(Counter(r.error_code for r in summary.records if r.status == "error").items()):
        table.add_row(f"  {code}", str(n))
    if summary.skipped:
        table.add_row("skipped (already done, --resume)", str(summary.skipped))
    if summary.failed_before:
        table.add_row("failed in earlier runs of this batch", str(summary.failed_before))
    rate = len(summary.records) / summary.seconds if summary.seconds > 0 else 0.0
    table.add_row("time", f"{summary.seconds:.1f} s ({rate:.1f} images/s)")
    table.add_row("results", str(out / "results.jsonl"))
    table.add_row("worklist", str(out / "worklist.csv"))
    return table


@dataclass(frozen=True)
class BatchSource:
    """Where a batch's inputs come from and which engine runs it (the options beyond PredictOptions)."""

    paths: list[str]
    shard: Shard | None = None
    ray: RayOptions | None = None  # None: the local engine

    @classmethod
    def parse(
        cls, paths: list[str], files_from: str | None, column: str | None, shard: str | None, engine: str,
        address: str | None, actors: int, cpus_per_actor: float, gpus_per_actor: float,
    ) -> BatchSource:
        """From the command line; raises ValueError (a one-line message naming what is valid)."""
        if engine not in ("local", "ray"):
            raise ValueError(f"--engine must be local or ray, got {engine!r}")
        if engine == "local" and (address is not None or actors or gpus_per_actor):
            raise ValueError("--address, --actors and --gpus-per-actor apply to --engine ray")
        if column is not None and files_from is None:
            raise ValueError("--column applies to --files-from")
        entries = list(paths) + (read_manifest(files_from, column) if files_from is not None else [])
        if not entries:
            raise ValueError("no inputs: name files, folders or globs, or a manifest with --files-from")
        if actors < 0:
            raise ValueError(f"--actors must be 0 (automatic) or positive, got {actors}")
        return cls(
            entries,
            Shard.parse(shard) if shard is not None else None,
            RayOptions(address, actors or None, cpus_per_actor, gpus_per_actor) if engine == "ray" else None,
        )


def _fail(command: str, message: str) -> int:
    typer.echo(f"triage {command}: error: {message}", err=True)
    return 2


def _run_ray(source: BatchSource, model: Path, out: Path, options: PredictOptions, label: str) -> int:
    """--engine ray: Ray Data reports progress itself; the same summary table at the end.

    A finished batch ends the process here (``os._exit``): Ray 2.60's core worker can crash with SIGSEGV
    while the interpreter finalizes after its cluster lost a node (seen in tests/scale), which would turn a
    complete, flushed batch into a failed exit status. Ray is shut down and every file closed by then."""
    from triage.scale.ray_engine import ScaleError, run_ray

    assert source.ray is not None
    try:
        summary = run_ray(source.paths, out, model, label, options, source.ray, shard=source.shard)
    except ScaleError as exc:
        return _fail("predict", str(exc))
    except TriageError as exc:
        return _fail("predict", f"{exc.code.value}: {exc.message}")
    Console().print(_summary_table(summary, out))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1 if summary.failed_in_batch else 0)


def run_predict(source: BatchSource, model: Path, out: Path, options: PredictOptions) -> int:
    console = err_console
    try:
        bundle = load_bundle(model)
    except TriageError as exc:
        return _fail("predict", f"{exc.code.value}: {exc.message}")
    if source.ray is not None:
        return _run_ray(source, model, out, options, bundle.label)
    columns = (
        TextColumn("predict"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[flag]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("predict", total=None, flag="")
        counts = Counter[str]()

        def on_record(record: object) -> None:
            status = getattr(record, "status", "")
            counts[
                "failed" if status == "error" else "positive" if getattr(record, "positive", False) else "ok"
            ] += 1
            progress.update(task, advance=1, flag=f"{counts['positive']} positive, {counts['failed']} failed")

        try:
            summary = predict(
                source.paths,
                out,
                bundle,
                options,
                on_record=on_record,
                on_total=lambda n: progress.update(task, total=n),
                shard=source.shard,
            )
        except TriageError as exc:
            progress.stop()
            typer.echo(f"triage predict: error: {exc.code.value}: {exc.message}", err=True)
            return 2
    Console().print(_summary_table(summary, out))
    return 1 if summary.failed_in_batch else 0


def run_merge(parts: list[Path], out: Path) -> int:
    """`triage merge`: 0 merged and complete, 1 complete but with failed inputs or incomplete shards,
    2 nothing merged (a one-line reason)."""
    try:
        summary = merge_outputs(parts, out)
    except MergeError as exc:
        return _fail("merge", str(exc))
    table = Table(title=f"triage merge → {out}", show_header=False)
    table.add_row("parts", str(summary.parts))
    table.add_row("inputs (each once)", str(len(summary.records)))
    table.add_row("failed", str(summary.failed))
    table.add_row("duplicates dropped", str(summary.duplicates))
    for problem in summary.problems:
        table.add_row("[bold red]incomplete[/]", problem)
    table.add_row("results", str(out / "results.jsonl"))
    table.add_row("worklist", str(out / "worklist.csv"))
    Console().print(table)
    return 1 if summary.failed or summary.problems else 0
