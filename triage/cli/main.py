"""The `triage` command: the runtime's own commands (synth, contact-sheet, predict, evaluate) and the root
that lists the commands other packages own (train, export, watch, ...: :mod:`triage.cli.plugins`).

Each command imports what it runs when it runs, so that start-up stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from triage import __version__
from triage.cli.dicomweb_input import DicomWebInput
from triage.cli.options import Device, fail, option_sets
from triage.cli.plugins import CommandTree
from triage.outputs.formats import HELP as FORMATS_HELP
from triage.outputs.formats import PREDICT_DEFAULT, format_option

Compression = Literal["none", "rle", "j2k"]
Variant = Literal["auto", "fp32", "int8", "tensorrt-fp16", "tensorrt-int8"]
Engine = Literal["local", "ray"]

LOCAL_FILES = DicomWebInput()  # `triage predict` without --dicomweb

app = typer.Typer(
    name="triage",
    cls=CommandTree,
    help="Pneumothorax triage for chest radiographs: synthesize studies, train, export, predict, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"triage {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="More log output: -v info, -vv debug.")
    ] = 0,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
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


@app.command(hidden=True)
def version() -> None:
    """Print the version (also: triage --version) and ONNX Runtime's execution providers: available (in
    the installed wheel) and active (a session starts them here: CUDA needs the driver, CUDA 13, cuDNN 9)."""
    import onnxruntime as ort

    from triage.backends.onnx import active_providers

    typer.echo(__version__)
    typer.echo(f"onnxruntime {ort.__version__}")
    typer.echo(f"providers available: {', '.join(ort.get_available_providers())}")
    typer.echo(f"providers active: {', '.join(active_providers())}")


@app.command(rich_help_panel="Data")
def synth(
    out: Annotated[Path, typer.Argument(help="Output folder (SIIM-ACR layout).")],
    studies: Annotated[int, typer.Option(min=1, help="Number of studies (one image each).")] = 100,
    positive_fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Fraction with a pneumothorax.")
    ] = 0.22,
    size: Annotated[int, typer.Option(min=128, max=4096, help="Image side in pixels.")] = 1024,
    seed: Annotated[int, typer.Option(help="Seed; the same seed gives the same files.")] = 0,
    workers: Annotated[int, typer.Option(min=0, help="Worker processes; 0 = one per available core.")] = 0,
    compression: Annotated[Compression, typer.Option(help="Transfer syntax (rle, j2k: lossless).")] = "none",
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
    """Synthesize chest-radiograph studies from a phantom.

    A procedural phantom writes DICOM images, pneumothorax and lung masks, reading heatmaps and labels in
    the SIIM-ACR layout.
    """
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


@app.command("contact-sheet", rich_help_panel="Data")
def contact_sheet_cmd(
    data: Annotated[Path, typer.Argument(help="A folder written by `triage synth`.")],
    out: Annotated[Path, typer.Argument(help="PNG file to write.")],
    n: Annotated[int, typer.Option(min=1, help="Number of tiles.")] = 16,
    columns: Annotated[int, typer.Option(min=1, help="Tiles per row.")] = 4,
    tile: Annotated[int, typer.Option(min=64, help="Tile side in pixels.")] = 320,
    outline: Annotated[bool, typer.Option(help="Outline the pneumothorax masks.")] = True,
) -> None:
    """Render a PNG grid of a synthetic set's images.

    The pneumothorax masks are outlined (--no-outline: plain images).
    """
    from triage.synth.contact_sheet import render_contact_sheet

    if not (data / "metadata.csv").exists():
        fail("contact-sheet", f"{data} has no metadata.csv; point it at a folder written by `triage synth`")
    render_contact_sheet(data, out, n=n, columns=columns, tile=tile, outline=outline)
    typer.echo(f"contact sheet: {out}")


@app.command(rich_help_panel="Predict")
@option_sets
def predict(
    model: Annotated[Path, typer.Option("--model", "-m", help="Model bundle folder (card.json + models).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    paths: Annotated[
        list[str] | None, typer.Argument(help="DICOM files, folders (recursive) or globs (or --dicomweb).")
    ] = None,
    files_from: Annotated[
        str | None,
        typer.Option(help="Manifest of inputs: a text file (one per line), .csv or .parquet; - for stdin."),
    ] = None,
    column: Annotated[
        str | None, typer.Option(help="The manifest's column of paths (default: 'path', or its only one).")
    ] = None,
    shard: Annotated[
        str | None, typer.Option(help="Run only shard K/N (K = 0..N-1) of the inputs, split by file path.")
    ] = None,
    engine: Annotated[
        Engine, typer.Option(help="ray: a Ray cluster's actor pool (the scale extra).")
    ] = "local",
    address: Annotated[
        str | None, typer.Option(help="--engine ray: the cluster (HOST:PORT, ray://HOST:10001, auto, local).")
    ] = None,
    actors: Annotated[
        int, typer.Option(min=0, help="--engine ray: actor pool size; 0 = as many as fit.")
    ] = 0,
    cpus_per_actor: Annotated[float, typer.Option(help="--engine ray: CPUs per actor.")] = 1.0,
    gpus_per_actor: Annotated[float, typer.Option(help="--engine ray: GPUs per actor (CUDA).")] = 0.0,
    tta: Annotated[bool, typer.Option(help="Test-time augmentation as the bundle's card lists.")] = True,
    saliency: Annotated[bool, typer.Option(help="Saliency (CAM, and the saliency model if any).")] = True,
    output_format: Annotated[
        str,
        typer.Option("--format", help=FORMATS_HELP),
    ] = format_option(PREDICT_DEFAULT),
    batch_size: Annotated[int, typer.Option(min=1, help="Images per model call.")] = 8,
    device: Annotated[Device, typer.Option(help="Where the models run.")] = "auto",
    threads: Annotated[int, typer.Option(min=0, help="ONNX Runtime threads; 0 = the cores available.")] = 0,
    read_workers: Annotated[
        int, typer.Option(min=0, help="DICOM decode/preprocess threads; 0 = automatic.")
    ] = 0,
    write_workers: Annotated[int, typer.Option(min=0, help="Output-writing threads; 0 = automatic.")] = 0,
    variant: Annotated[
        Variant, typer.Option(help="Model variant; auto = the card's default for the device.")
    ] = "auto",
    any_modality: Annotated[bool, typer.Option(help="Accept modalities other than CR / DX.")] = False,
    max_pixels: Annotated[
        int, typer.Option(min=1, help="Largest image accepted, in decoded pixels (checked before decoding).")
    ] = 40_000_000,  # triage.io.codestream.DEFAULT_MAX_PIXELS (not imported: keeps start-up fast)
    resume: Annotated[bool, typer.Option(help="Continue a batch in OUT, skipping finished inputs.")] = False,
    web: DicomWebInput = LOCAL_FILES,
) -> None:
    """Triage chest radiographs with a model bundle.

    Gate, segment, threshold, saliency; writes results.jsonl, worklist.csv and the DICOM outputs.
    """
    from triage.cascade.predict import PredictOptions
    from triage.cli.predict_cmd import BatchSource, run_predict
    from triage.io.dicom import ReadPolicy
    from triage.outputs.formats import parse_formats

    try:
        options = PredictOptions(
            tta=tta,
            saliency=saliency,
            formats=parse_formats(output_format),
            batch_size=batch_size,
            policy=ReadPolicy(any_modality=any_modality, max_pixels=max_pixels),
            device=device,
            threads=threads or None,
            read_workers=read_workers or None,
            write_workers=write_workers or None,
            variant=variant,
            resume=resume,
        )

        def batch(inputs: list[str]) -> BatchSource:
            return BatchSource.parse(
                inputs, files_from, column, shard, engine, address, actors, cpus_per_actor, gpus_per_actor
            )

        if web.dicomweb is None:
            if web.study or web.since:
                raise ValueError("--study and --since need --dicomweb URL")
            source = batch(paths or [])
        elif paths or files_from:
            raise ValueError("give either local inputs (paths, --files-from) or --dicomweb, not both")
        else:
            batch([str(out)])  # the other options are checked before anything is retrieved
    except ValueError as exc:
        fail("predict", str(exc))
    if web.dicomweb is not None:
        from triage.cli.dicomweb_input import predict_dicomweb

        raise typer.Exit(predict_dicomweb(web, model, out, options, batch))
    raise typer.Exit(run_predict(source, model, out, options))


@app.command(rich_help_panel="Predict")
def merge(
    parts: Annotated[list[Path], typer.Argument(help="The --out folders of the shard jobs.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the merged results.")],
) -> None:
    """Join the outputs of shard jobs into one batch.

    The --out folders of `triage predict --shard K/N` become one results.jsonl (every input once) and one
    worklist.csv; a missing, repeated or unfinished shard is named.
    """
    from triage.cli.predict_cmd import run_merge

    raise typer.Exit(run_merge(parts, out))


@app.command(rich_help_panel="Predict")
def evaluate(
    model: Annotated[
        list[Path],
        typer.Option(
            "--model",
            "-m",
            help="A bundle, or training runs: a classifier run and/or a segmenter/baseline run.",
        ),
    ],
    data: Annotated[Path, typer.Option(help="Labelled data: SIIM-ACR layout or folder format.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder (report.md, report.json, PNGs).")],
    tta: Annotated[bool, typer.Option(help="Test-time augmentation as the model lists it.")] = True,
    bootstrap: Annotated[
        int, typer.Option(min=0, help="Bootstrap resamples for the intervals (0: off).")
    ] = 1000,
    overlays: Annotated[
        int, typer.Option(min=0, help="Overlay tiles per group (best, worst, false pos.).")
    ] = 4,
    section: Annotated[
        list[str] | None, typer.Option(help="Report sections to write (default: all built-in; repeatable).")
    ] = None,
    device: Annotated[Device, typer.Option(help="Where the models run.")] = "auto",
    cache: Annotated[Path | None, typer.Option(help="Grid cache (default ~/.cache/triage/grids).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per model call.")] = 8,
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
        typer.Option(
            help="Add the corruption-robustness section: 5 corruptions x 5 severities, delta AUC "
            "and delta Dice (docs/saliency.md)."
        ),
    ] = False,
) -> None:
    """Measure a bundle or training runs on labelled data.

    Dice per image, Dice, IoU and AUC with bootstrap intervals, sensitivity and specificity at the gate,
    results per stratum, ROC, the threshold surface and best/worst overlays.
    """
    from triage.cli.evaluate_cmd import run_evaluate
    from triage.evaluation.context import EvalOptions
    from triage.evaluation.sections import DEFAULT_SECTIONS

    options = EvalOptions(bootstrap=bootstrap, overlays=overlays)
    sections = list(section or DEFAULT_SECTIONS)
    sections += [name for name, on in (("saliency", saliency_), ("corruptions", corruptions)) if on]
    raise typer.Exit(run_evaluate(model, data, out, options, sections, tta, device, cache, batch_size))


if __name__ == "__main__":
    app(prog_name="triage")
