"""The `triage` command. Each subcommand imports its package lazily so that start-up stays fast."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

from triage import __version__
from triage.outputs.formats import HELP as FORMATS_HELP
from triage.outputs.formats import PREDICT_DEFAULT, format_option

app = typer.Typer(
    name="triage",
    help="Pneumothorax triage for chest radiographs: synthesize studies, train, export, predict, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="More log output: -v info, -vv debug.")
    ] = 0,
) -> None:
    """Pneumothorax triage for chest radiographs: synthesize studies, train, export, predict, serve.

    Logs go to stderr without patient data: text of third-party warnings (which may quote DICOM
    header values such as names) is withheld.
    """
    import logging

    from rich.logging import RichHandler

    from triage.cli.console import err_console
    from triage.logsafe import configure

    handler = RichHandler(console=err_console, show_time=False, show_path=False, markup=False)
    third_party = logging.WARNING if verbose else logging.ERROR  # their text is withheld either way
    configure(max(logging.DEBUG, logging.WARNING - 10 * verbose), handler, third_party_level=third_party)


def fail(command: str, message: str) -> NoReturn:
    """Print a one-line error for `command` and exit with status 2 (bad usage or input)."""
    typer.echo(f"triage {command}: error: {message}", err=True)
    raise typer.Exit(2)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="Output folder (SIIM-ACR layout).")],
    studies: Annotated[int, typer.Option(help="Number of studies (one image each).")] = 100,
    positive_fraction: Annotated[float, typer.Option(help="Fraction with a pneumothorax, 0..1.")] = 0.22,
    size: Annotated[int, typer.Option(help="Image side in pixels, 128..4096.")] = 1024,
    seed: Annotated[int, typer.Option(help="Seed; the same seed gives the same files.")] = 0,
    workers: Annotated[int, typer.Option(help="Worker processes; 0 = one per available core.")] = 0,
    compression: Annotated[str, typer.Option(help="Transfer syntax: none, rle or j2k (lossless).")] = "none",
    pleural_contrast: Annotated[
        float | None, typer.Option(help="Visceral pleural line brightness (difficulty).")
    ] = None,
    marking_density: Annotated[float | None, typer.Option(help="Lung markings, 0..3 (1 = default).")] = None,
    noise: Annotated[float | None, typer.Option(help="Noise sigma in display units at 1024 px.")] = None,
    drain_positive: Annotated[float | None, typer.Option(help="P(chest drain | pneumothorax).")] = None,
    drain_negative: Annotated[float | None, typer.Option(help="P(chest drain | no pneumothorax).")] = None,
    contact_sheet: Annotated[
        Path | None, typer.Option(help="Also render a PNG contact sheet of the set to this path.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace an earlier synthetic set in OUT.")] = False,
) -> None:
    """Synthesize chest-radiograph studies (DICOM, masks, labels) from a procedural phantom."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from triage.synth.config import ConfigError, PhantomConfig
    from triage.synth.dataset import SynthRequest, default_workers, synthesize

    knobs = {
        "pleural_line_contrast": pleural_contrast,
        "marking_density": marking_density,
        "noise": noise,
        "drain_given_positive": drain_positive,
        "drain_given_negative": drain_negative,
        "compression": compression,
    }
    if workers < 0:
        fail("synth", f"--workers must be 0 (auto) or a positive count, got {workers}")
    try:
        config = PhantomConfig.from_dict({k: v for k, v in knobs.items() if v is not None})
        req = SynthRequest(out, studies, positive_fraction, size, seed, config)
    except ConfigError as exc:
        fail("synth", str(exc))
    n_workers = min(workers or default_workers(), studies)
    columns = (TextColumn("synth"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task("synth", total=studies)
        try:
            rows = synthesize(req, workers=n_workers, force=force, on_study=lambda _: progress.advance(task))
        except ConfigError as exc:
            progress.stop()
            fail("synth", str(exc))
    positives = sum(int(r["label"]) for r in rows)
    typer.echo(f"wrote {len(rows)} studies ({positives} with pneumothorax) to {out}")
    if contact_sheet is not None:
        from triage.synth.contact_sheet import render_contact_sheet

        render_contact_sheet(out, contact_sheet)
        typer.echo(f"contact sheet: {contact_sheet}")


@app.command("contact-sheet")
def contact_sheet_cmd(
    data: Annotated[Path, typer.Argument(help="A folder written by `triage synth`.")],
    out: Annotated[Path, typer.Argument(help="PNG file to write.")],
    n: Annotated[int, typer.Option(help="Number of tiles.")] = 16,
    columns: Annotated[int, typer.Option(help="Tiles per row.")] = 4,
    tile: Annotated[int, typer.Option(help="Tile side in pixels.")] = 320,
    outline: Annotated[bool, typer.Option(help="Outline the pneumothorax masks.")] = True,
) -> None:
    """Render a PNG grid of a synthetic set's images, with pneumothorax outlines."""
    from triage.synth.contact_sheet import render_contact_sheet

    if not (data / "metadata.csv").exists():
        fail("contact-sheet", f"{data} has no metadata.csv; point it at a folder written by `triage synth`")
    if n < 1 or columns < 1 or tile < 64:
        fail("contact-sheet", f"need --n >= 1, --columns >= 1, --tile >= 64; got {n}, {columns}, {tile}")
    render_contact_sheet(data, out, n=n, columns=columns, tile=tile, outline=outline)
    typer.echo(f"contact sheet: {out}")


@app.command()
def folds(
    data: Annotated[Path, typer.Argument(help="A synthetic set (metadata.csv) to split.")],
    k: Annotated[int, typer.Option("--folds", help="Number of folds.")] = 5,
    seed: Annotated[int, typer.Option(help="Shuffling seed.")] = 0,
    out: Annotated[Path | None, typer.Option(help="CSV to write; default DATA/folds.csv.")] = None,
) -> None:
    """Patient-level stratified K-fold split of a data set, saved to CSV (needs the training extra)."""
    try:
        from training.folds import make_folds, write_folds_csv
    except ImportError as exc:
        fail("folds", f"needs scikit-learn: pip install 'triage[training]' ({exc})")
    from triage.synth.dataset import read_metadata

    if not (data / "metadata.csv").exists():
        fail("folds", f"{data} has no metadata.csv")
    table = [(r["image_id"], r["patient_id"], int(r["label"])) for r in read_metadata(data)]
    try:
        assignment = make_folds(table, k=k, seed=seed)
    except ValueError as exc:
        fail("folds", str(exc))
    target = out or data / "folds.csv"
    write_folds_csv(target, table, assignment)
    typer.echo(f"wrote {k} patient-level folds of {len(table)} images to {target}")


@app.command()
def predict(
    paths: Annotated[list[str], typer.Argument(help="DICOM files, folders (recursive) or globs.")],
    model: Annotated[Path, typer.Option("--model", "-m", help="Model bundle folder (card.json + models).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    tta: Annotated[bool, typer.Option(help="Test-time augmentation as the bundle's card lists.")] = True,
    saliency: Annotated[bool, typer.Option(help="Saliency (CAM, and the saliency model if any).")] = True,
    output_format: Annotated[
        str,
        typer.Option("--format", help=FORMATS_HELP),
    ] = format_option(PREDICT_DEFAULT),
    batch_size: Annotated[int, typer.Option(help="Images per model call.")] = 8,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    threads: Annotated[int, typer.Option(help="ONNX Runtime threads; 0 = the cores available.")] = 0,
    read_workers: Annotated[int, typer.Option(help="DICOM decode/preprocess threads; 0 = automatic.")] = 0,
    write_workers: Annotated[int, typer.Option(help="Output-writing threads; 0 = automatic.")] = 0,
    variant: Annotated[
        str, typer.Option(help="Model variant: auto (the card's default for the device), fp32, int8, ...")
    ] = "auto",
    any_modality: Annotated[bool, typer.Option(help="Accept modalities other than CR / DX.")] = False,
    resume: Annotated[bool, typer.Option(help="Continue a batch in OUT, skipping finished inputs.")] = False,
) -> None:
    """Triage chest radiographs: gate, segment, threshold, saliency; results.jsonl, worklist.csv, DICOM."""
    from triage.cascade.predict import PredictOptions
    from triage.cli.predict_cmd import run_predict
    from triage.io.dicom import ReadPolicy
    from triage.outputs.formats import parse_formats

    if device not in ("auto", "cpu", "cuda"):
        fail("predict", f"--device must be auto, cpu or cuda, got {device!r}")
    for flag, value in (
        ("--threads", threads),
        ("--read-workers", read_workers),
        ("--write-workers", write_workers),
    ):
        if value < 0:
            fail("predict", f"{flag} must be 0 (auto) or positive, got {value}")
    try:
        options = PredictOptions(
            tta=tta,
            saliency=saliency,
            formats=parse_formats(output_format),
            batch_size=batch_size,
            policy=ReadPolicy(any_modality=any_modality),
            device=device,  # type: ignore[arg-type]
            threads=threads or None,
            read_workers=read_workers or None,
            write_workers=write_workers or None,
            variant=variant,
            resume=resume,
        )
    except ValueError as exc:
        fail("predict", str(exc))
    raise typer.Exit(run_predict(paths, model, out, options))


@app.command("export")
def export_cmd(
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
        str,
        typer.Option(help="CPU default variant: auto (INT8 where it is >= 1.2x faster here), int8, fp32."),
    ] = "auto",
    tensorrt: Annotated[
        bool, typer.Option("--tensorrt", help="Add TensorRT engines (needs TensorRT + a GPU).")
    ] = False,
    fp16: Annotated[bool, typer.Option("--fp16", help="TensorRT engines in FP16 (the default).")] = False,
    max_batch: Annotated[
        int, typer.Option(help="Largest batch (images x TTA) for TensorRT and Triton.")
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
        int, typer.Option(help="ONNX Runtime threads for the checks; 0 = the cores available.")
    ] = 0,
    force: Annotated[bool, typer.Option(help="Replace an existing --out / --triton folder.")] = False,
) -> None:
    """Export trained runs to a model bundle: ONNX (+ INT8, TensorRT), parity-checked; a Triton repository."""
    try:
        from export.cli import run_export
        from export.pipeline import ExportOptions
    except ImportError as exc:
        fail("export", f"needs the training extra: pip install 'triage[training]' ({exc})")
    if fp16 and not tensorrt:
        fail("export", "--fp16 chooses the TensorRT precision: add --tensorrt")
    if fp16 and int8:
        fail("export", "--fp16 and --int8 exclude each other (TensorRT engines are FP16 or INT8)")
    if threads < 0:
        fail("export", f"--threads must be 0 (auto) or positive, got {threads}")
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


# --- services (the serving extra) ----------------------------------------------------------------
# Thin forwarders: options and bodies live in serving/cli.py, imported only when the command runs
# (`triage watch --help` shows them), so the runtime CLI never imports watchdog or pynetdicom.
_FORWARD_ARGS = {
    "context_settings": {"allow_extra_args": True, "ignore_unknown_options": True},
    "add_help_option": False,
}


def _serving(command: str, args: list[str]) -> NoReturn:
    try:
        from serving import missing_dependencies
    except ImportError:
        fail(command, "needs the serving package and extra: pip install 'triage[serving]'")
    missing = missing_dependencies()
    if missing:
        extra = "needs the serving extra: pip install 'triage[serving]'"
        fail(command, f"{extra} (missing: {', '.join(missing)})")
    from serving.cli import main as serving_main

    raise typer.Exit(serving_main(command, args))


@app.command(**_FORWARD_ARGS)  # type: ignore[arg-type]
def watch(ctx: typer.Context) -> None:
    """Folder watcher service: triage each complete study dropped in a folder (--help for options)."""
    _serving("watch", ctx.args)


@app.command(**_FORWARD_ARGS)  # type: ignore[arg-type]
def listen(ctx: typer.Context) -> None:
    """DICOM listener service (storage SCP), forwarding results to a PACS (--help for options)."""
    _serving("listen", ctx.args)


@app.command(**_FORWARD_ARGS)  # type: ignore[arg-type]
def jobs(ctx: typer.Context) -> None:
    """Job store of a watch / listen service: states, failures, re-queue (--help for options)."""
    _serving("jobs", ctx.args)


# `triage train classifier|segmenter|baseline|thresholds`: the sub-app imports only typer; each command
# imports the training code (torch) when it runs. Bodies: triage/cli/train_cmd.py, training/.
from triage.cli.train_cmd import train_app  # noqa: E402

app.add_typer(train_app, name="train")

# Saliency: `triage train saliency`, `triage export-saliency`, `triage shortcut-experiment`; typer options in
# triage/cli/saliency_cmd.py, bodies (torch, imported when a command runs) in training/saliency/cli.py.
from triage.cli.saliency_cmd import (  # noqa: E402
    export_saliency_command,
    shortcut_command,
    train_saliency_command,
)

train_app.command("saliency")(train_saliency_command)
app.command("export-saliency")(export_saliency_command)
app.command("shortcut-experiment")(shortcut_command)


@app.command()
def evaluate(
    model: Annotated[
        list[Path],
        typer.Option("--model", "-m", help="A bundle, or training runs: a classifier run and/or a "
                                           "segmenter/baseline run."),
    ],
    data: Annotated[Path, typer.Option(help="Labelled data: SIIM-ACR layout or folder format.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder (report.md, report.json, PNGs).")],
    tta: Annotated[bool, typer.Option(help="Test-time augmentation as the model lists it.")] = True,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for the intervals (0: off).")] = 1000,
    overlays: Annotated[int, typer.Option(help="Overlay tiles per group (best, worst, false pos.).")] = 4,
    section: Annotated[
        list[str] | None, typer.Option(help="Report sections to write (default: all built-in; repeatable).")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    cache: Annotated[Path | None, typer.Option(help="Grid cache (default ~/.cache/triage/grids).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per model call.")] = 8,
    saliency_: Annotated[
        bool,
        typer.Option(
            "--saliency",
            help="Add the saliency section: CAM and saliency-model maps against lungs, lesion, drain and "
            "reading heatmap (docs/saliency.md).",
        ),
    ] = False,
    corruptions: Annotated[
        bool,
        typer.Option(help="Add the corruption-robustness section: 5 corruptions x 5 severities, delta AUC "
                          "and delta Dice (docs/saliency.md)."),
    ] = False,
) -> None:
    """Measure a bundle or runs on labelled data: Dice per image, Dice, IoU, AUC with bootstrap intervals,
    sensitivity/specificity at the gate, results per stratum, ROC, threshold surface, best/worst overlays."""
    from triage.cli.evaluate_cmd import run_evaluate
    from triage.evaluation.context import EvalOptions
    from triage.evaluation.sections import DEFAULT_SECTIONS

    if device not in ("auto", "cpu", "cuda"):
        fail("evaluate", f"--device must be auto, cpu or cuda, got {device!r}")
    if bootstrap < 0 or overlays < 0 or batch_size < 1:
        fail("evaluate", "--bootstrap and --overlays must be >= 0 and --batch-size >= 1")
    options = EvalOptions(bootstrap=bootstrap, overlays=overlays)
    sections = list(section or DEFAULT_SECTIONS)
    sections += [name for name, on in (("saliency", saliency_), ("corruptions", corruptions)) if on]
    raise typer.Exit(run_evaluate(model, data, out, options, sections, tta, device, cache, batch_size))


@app.command()
def experiment(
    data: Annotated[Path, typer.Option(help="Training data for the 5-fold cross-validation.")],
    out: Annotated[Path, typer.Option(help="Experiment folder (runs, table, reports).")],
    test: Annotated[Path | None, typer.Option(help="Held-out test data, per fold and stratum.")] = None,
    preset: Annotated[str, typer.Option(help="seed, small or tiny.")] = "small",
    folds: Annotated[int, typer.Option(help="Number of folds.")] = 5,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="ROLE.KEY=VALUE for one role (classifier.epochs=8), KEY=VALUE for all."),
    ] = None,
    cache: Annotated[Path | None, typer.Option(help="Grid cache folder.")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """The cascade-vs-baseline table (the thesis's Table 5.1) on your data: cross-validate the classifier,
    the positive-only U-Net and the baseline U-Net; argmax / threshold / TTA rows, 5-fold mean ± std.
    Resumable: run it again to continue."""
    from triage.cli.train_cmd import run_experiment

    raise typer.Exit(run_experiment(data, out, test, preset, folds, set_ or [], cache, quiet))


if __name__ == "__main__":
    app()
