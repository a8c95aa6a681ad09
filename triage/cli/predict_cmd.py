"""The body of `triage predict`: progress bar, summary table, exit status (0 ok, 1 any failed, 2 usage)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from triage.bundle import load_bundle
from triage.cascade.predict import PredictOptions, Summary, predict
from triage.cli.console import err_console
from triage.errors import TriageError


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
    rate = len(summary.records) / summary.seconds if summary.seconds > 0 else 0.0
    table.add_row("time", f"{summary.seconds:.1f} s ({rate:.1f} images/s)")
    table.add_row("results", str(out / "results.jsonl"))
    table.add_row("worklist", str(out / "worklist.csv"))
    return table


def run_predict(paths: list[str], model: Path, out: Path, options: PredictOptions) -> int:
    console = err_console
    try:
        bundle = load_bundle(model)
    except TriageError as exc:
        typer.echo(f"triage predict: error: {exc.code.value}: {exc.message}", err=True)
        return 2
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
                paths,
                out,
                bundle,
                options,
                on_record=on_record,
                on_total=lambda n: progress.update(task, total=n),
            )
        except TriageError as exc:
            progress.stop()
            typer.echo(f"triage predict: error: {exc.code.value}: {exc.message}", err=True)
            return 2
    Console().print(_summary_table(summary, out))
    return 1 if summary.failed else 0
