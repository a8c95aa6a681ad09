"""The bodies of ``triage export`` and ``triage export-saliency`` (the Typer commands: :mod:`export.cli`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from export.errors import ExportError
from export.pipeline import ExportOptions, export_bundle

__all__ = ["ExportOptions", "run_export", "run_export_saliency"]


def _summary(card: dict[str, Any], out: Path, seconds: float) -> Table:
    table = Table(title=f"triage export → {out}")
    for column in ("model", "variant", "file", "parity (max |Δ|)", "decisions", "CPU default"):
        table.add_column(column)
    for role, entry in card["models"].items():
        variants = {entry.get("precision", "fp32"): entry, **entry.get("variants", {})}
        for name, var in variants.items():
            figs = var.get("parity", {})
            diffs = ", ".join(f"{k} {v:.1e}" for k, v in figs.get("max_abs_diff", {}).items())
            if role == "classifier":
                decisions = f"{figs.get('gate_mismatches', '?')} gate flips / {figs.get('images', '?')}"
            elif role == "segmenter":
                decisions = f"{figs.get('mask_mismatches', '?')} masks differ / {figs.get('images', '?')}"
            else:
                decisions = "-"
            default = entry.get("default_variant", {}).get("cpu", entry.get("precision", "fp32"))
            speed = var.get("speed", {})
            note = f" ({speed['speedup']:.2f}x)" if speed else ""
            table.add_row(
                role, name, var["file"], diffs or "-", decisions, ("yes" if default == name else "") + note
            )
    th = card["thresholds"]
    table.caption = (
        f"gate {th['gate']:g}, triplet ({th['top']:g}, {th['min_area']}, {th['bottom']:g}), "
        f"min_component {th['min_component']}; {card['content_hash'][:19]}…; {seconds:.0f} s"
    )
    return table


def run_export(runs: list[Path], opts: ExportOptions) -> int:
    console = Console(stderr=True)
    t0 = time.perf_counter()

    def step(message: str) -> None:
        console.print(f"[dim]export:[/dim] {message}")

    opts.on_step = step
    try:
        card = export_bundle(runs, opts)
    except ExportError as exc:
        typer.echo(f"triage export: error: {exc}", err=True)
        return 2
    Console().print(_summary(card, opts.out, time.perf_counter() - t0))
    if opts.triton is not None:
        typer.echo(f"Triton model repository: {opts.triton}")
    typer.echo(f"bundle: {opts.out}")
    return 0


def run_export_saliency(run: Path, bundle: Path) -> int:
    from export.saliency import add_to_bundle
    from triage.errors import TriageError

    try:
        entry = add_to_bundle(run, bundle)
    except (ExportError, TriageError) as exc:
        typer.echo(f"triage export-saliency: error: {exc}", err=True)
        return 2
    typer.echo(
        f"added {entry['file']} to {bundle} (torch/ONNX max abs diff "
        f"{entry['parity']['max_abs_diff']['map']:.2g}); bundle resealed"
    )
    return 0
