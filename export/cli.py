"""The commands of the ``export`` package, registered with ``triage`` through the ``triage.commands``
entry-point group (pyproject.toml): ``triage export`` and ``triage export-saliency``.

This module imports only typer: the bodies (:mod:`export.commands`; torch, onnx) are imported when a
command runs, so ``triage --help`` stays fast. Without the training extra the root answers with a one-line
hint before it loads this module (triage/cli/plugins.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from triage.cli.options import fail

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command("export", rich_help_panel="Export")
def export_bundle(
    runs: Annotated[
        list[Path], typer.Argument(help="Run folders: a classifier, a segmenter (and a saliency) run.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle folder to write (must not exist).")],
    thresholds: Annotated[
        Path | None,
        typer.Option(help="JSON with gate/top/min_area/bottom/min_component (overrides the runs)."),
    ] = None,
    default_thresholds: Annotated[
        bool, typer.Option(help="Accept the documented default thresholds for keys no run or file gives.")
    ] = False,
    validation: Annotated[
        Path | None, typer.Option(help="DICOM folder for the parity check; default: a small synthetic set.")
    ] = None,
    int8: Annotated[
        bool,
        typer.Option("--int8", help="Add INT8 CPU variants (and INT8 TensorRT engines with --tensorrt)."),
    ] = False,
    calibration: Annotated[
        Path | None, typer.Option(help="DICOM folder for INT8 calibration; default: a small synthetic set.")
    ] = None,
    int8_default: Annotated[
        Literal["auto", "int8", "fp32"],
        typer.Option(help="CPU default variant; auto: INT8 where it is at least 1.2x faster here."),
    ] = "auto",
    tensorrt: Annotated[
        bool, typer.Option("--tensorrt", help="Add TensorRT engines (needs TensorRT + a GPU).")
    ] = False,
    fp16: Annotated[bool, typer.Option("--fp16", help="TensorRT engines in FP16 (the default).")] = False,
    max_batch: Annotated[
        int, typer.Option(min=1, help="Largest batch (images x TTA) for TensorRT and Triton.")
    ] = 32,
    triton: Annotated[Path | None, typer.Option(help="Also write a Triton model repository here.")] = None,
    tta: Annotated[
        str, typer.Option(help="Comma-separated TTA list for the card: none, hflip, vflip.")
    ] = "none,hflip",
    name: Annotated[str | None, typer.Option(help="Bundle name (default: the --out folder name).")] = None,
    version: Annotated[str, typer.Option(help="Bundle version.")] = "1",
    ort_optimize: Annotated[
        bool, typer.Option(help="Store ONNX Runtime's offline-optimised graphs.")
    ] = False,
    threads: Annotated[
        int, typer.Option(min=0, help="ONNX Runtime threads for the checks; 0 = the cores available.")
    ] = 0,
    force: Annotated[bool, typer.Option(help="Replace an existing --out / --triton folder.")] = False,
) -> None:
    """Export trained runs to a parity-checked model bundle.

    ONNX (+ INT8 variants, TensorRT engines), optionally a Triton model repository.
    The classifier, the segmenter and an optional saliency run become one bundle; each model's ONNX
    graph is checked against the trained module on validation images.
    """
    if fp16 and not tensorrt:
        fail("export", "--fp16 chooses the TensorRT precision: add --tensorrt")
    if fp16 and int8:
        fail("export", "--fp16 and --int8 exclude each other (TensorRT engines are FP16 or INT8)")
    from export.commands import ExportOptions, run_export

    options = ExportOptions(
        out=out,
        name=name,
        version=version,
        tta=tuple(t.strip() for t in tta.split(",") if t.strip()),
        thresholds_file=thresholds,
        default_thresholds=default_thresholds,
        validation=validation,
        calibration=calibration,
        int8=int8,
        int8_default=int8_default,
        tensorrt=tensorrt,
        trt_precision="int8" if int8 else "fp16",
        max_batch=max_batch,
        triton=triton,
        ort_optimize=ort_optimize,
        threads=threads or None,
        force=force,
    )
    raise typer.Exit(run_export(runs, options))


@app.command("export-saliency", rich_help_panel="Export")
def export_saliency(
    run: Annotated[Path, typer.Option(help="A saliency run (triage train saliency).")],
    bundle: Annotated[Path, typer.Option(help="The model bundle to add it to (resealed).")],
) -> None:
    """Add a saliency run to a bundle as its saliency model.

    The bundle's card gains models.saliency and is resealed.
    """
    from export.commands import run_export_saliency

    raise typer.Exit(run_export_saliency(run, bundle))
