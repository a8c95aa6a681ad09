"""The bodies of `triage watch`, `triage listen` and `triage jobs` (the serving extra).

``triage/cli/main.py`` forwards the arguments here lazily, so the runtime CLI starts without importing
watchdog, pynetdicom or prometheus-client. Exit status: 0 stopped cleanly, 1 a component died, 2 a bad
setting or a bundle / output folder that cannot be used (one line on stderr naming it).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from serving.config import (
    FORWARD_KINDS,
    ConfigError,
    Destination,
    ListenConfig,
    ServiceConfig,
    WatchConfig,
)
from serving.logs import LEVELS, setup_logging
from triage.outputs.formats import HELP as FORMATS_HELP
from triage.outputs.formats import SERVICE_DEFAULT, format_option

FORMATS_DEFAULT = format_option(SERVICE_DEFAULT)
KINDS_DEFAULT = ",".join(FORWARD_KINDS)

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True)

Out = Annotated[
    Path, typer.Option("--out", "-o", help="Output folder: results, worklist, studies/, job store.")
]
Model = Annotated[Path, typer.Option("--model", "-m", help="Model bundle folder (card.json + models).")]
Quiet = Annotated[
    float,
    typer.Option(help="A study is complete when none of its files arrived or changed for this many seconds."),
]
Formats = Annotated[str, typer.Option("--format", help=FORMATS_HELP)]
BatchSize = Annotated[int, typer.Option(help="Images per model call.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]
Threads = Annotated[int, typer.Option(help="ONNX Runtime threads; 0 = the cores available.")]
ReadWorkers = Annotated[int, typer.Option(help="DICOM decode/preprocess threads; 0 = automatic.")]
WriteWorkers = Annotated[int, typer.Option(help="Output-writing threads; 0 = automatic.")]
AnyModality = Annotated[bool, typer.Option(help="Accept modalities other than CR / DX for presentation.")]
Db = Annotated[Path | None, typer.Option(help="Job store (SQLite); default OUT/jobs.sqlite3.")]
HttpHost = Annotated[
    str, typer.Option(envvar="TRIAGE_HTTP_HOST", help="Address of the /metrics and /healthz endpoint.")
]
HttpPort = Annotated[
    int, typer.Option(envvar="TRIAGE_HTTP_PORT", help="Port of /metrics and /healthz; 0 turns it off.")
]
MinFree = Annotated[
    float,
    typer.Option(
        help="Below this many MB free in OUT: no new studies, C-STORE answered 0xA700 (out of resources)."
    ),
]
MaxAttempts = Annotated[int, typer.Option(help="Attempts per study for transient failures (disk full, I/O).")]
RetryBase = Annotated[float, typer.Option(help="First retry delay in seconds (doubles each attempt).")]
RetryMax = Annotated[float, typer.Option(help="Longest retry delay in seconds (studies, PACS, actions).")]
AeTitle = Annotated[str, typer.Option(help="Our DICOM AE title (called by modalities, calling the PACS).")]
Forward = Annotated[str | None, typer.Option(help="C-STORE results to this PACS: HOST:PORT:AET.")]
ForwardKinds = Annotated[str, typer.Option(help="Which outputs to forward: seg, sc, sr (comma-separated).")]
ForwardRejections = Annotated[
    int, typer.Option(help="Give up on an object the PACS refuses this many times.")
]
OnPositive = Annotated[
    str | None,
    typer.Option(
        help="Shell command run once per positive study; the study's result record (JSON) on stdin."
    ),
]
Webhook = Annotated[
    str | None, typer.Option(help="URL to POST the result record (JSON) of each positive study to.")
]
ActionAttempts = Annotated[int, typer.Option(help="Attempts per on-positive command / webhook.")]
WorklistHours = Annotated[float, typer.Option(help="worklist.csv lists studies finished in this many hours.")]
LogLevel = Annotated[str, typer.Option(help="debug, info, warning or error.")]
LogFile = Annotated[Path | None, typer.Option(help="Also write the JSON-lines log to this file.")]
Once = Annotated[bool, typer.Option(help="Exit once everything present has been processed.")]


def _fail(command: str, message: str) -> None:
    typer.echo(f"triage {command}: error: {message}", err=True)
    raise typer.Exit(2)


def _service_config(command: str, **values: object) -> ServiceConfig:
    formats = frozenset(f.strip() for f in str(values.pop("formats")).split(",") if f.strip())
    kinds = frozenset(k.strip() for k in str(values.pop("forward_kinds")).split(",") if k.strip())
    forward = values.pop("forward")
    counts: list[int | None] = []
    for name in ("threads", "read_workers", "write_workers"):
        value = int(values.pop(name))  # type: ignore[call-overload]
        if value < 0:
            _fail(command, f"--{name.replace('_', '-')} must be 0 (auto) or positive, got {value}")
        counts.append(value or None)
    threads, read_workers, write_workers = counts
    try:
        return ServiceConfig(
            formats=formats,
            forward_kinds=kinds,
            threads=threads,
            read_workers=read_workers,
            write_workers=write_workers,
            forward=Destination.parse(str(forward)) if forward else None,
            **values,  # type: ignore[arg-type]
        )
    except ConfigError as exc:
        _fail(command, str(exc))
        raise  # unreachable


def _run(
    command: str,
    service: ServiceConfig,
    make_source: object,
    roots: tuple[Path, ...],
    log_level: str,
    log_file: Path | None,
) -> int:
    from serving.service import Service, fatal_message
    from serving.store import StoreError
    from triage.errors import TriageError

    if log_level not in LEVELS:
        _fail(command, f"--log-level must be one of {', '.join(LEVELS)}, got {log_level!r}")
    setup_logging(log_level, log_file)
    try:
        return Service(service, make_source, roots).run()  # type: ignore[arg-type]
    except (ConfigError, TriageError, StoreError) as exc:
        typer.echo(f"triage {command}: error: {fatal_message(exc)}", err=True)
        return 2


@app.command()
def watch(
    folder: Annotated[Path, typer.Argument(help="Folder to watch (recursively) for DICOM files.")],
    out: Out,
    model: Model,
    quiet_seconds: Quiet = 10.0,
    poll: Annotated[
        bool, typer.Option(help="Poll instead of inotify (network shares give no events).")
    ] = False,
    poll_interval: Annotated[float, typer.Option(help="Seconds between polls with --poll.")] = 2.0,
    rescan_seconds: Annotated[
        float, typer.Option(help="Full re-scan of the folder every N seconds; 0 = only at start-up.")
    ] = 300.0,
    inputs: Annotated[
        str,
        typer.Option(
            help="After a study is done, its files are: keep (left in place), "
            "move (to OUT/processed) or delete."
        ),
    ] = "keep",
    formats: Formats = FORMATS_DEFAULT,
    batch_size: BatchSize = 8,
    device: DeviceOpt = "auto",
    threads: Threads = 0,
    read_workers: ReadWorkers = 0,
    write_workers: WriteWorkers = 0,
    any_modality: AnyModality = False,
    db: Db = None,
    http_host: HttpHost = "127.0.0.1",
    http_port: HttpPort = 9120,
    min_free_mb: MinFree = 1024.0,
    max_attempts: MaxAttempts = 8,
    retry_base: RetryBase = 5.0,
    retry_max: RetryMax = 600.0,
    ae_title: AeTitle = "TRIAGE",
    forward: Forward = None,
    forward_kinds: ForwardKinds = KINDS_DEFAULT,
    forward_max_rejections: ForwardRejections = 10,
    on_positive: OnPositive = None,
    webhook: Webhook = None,
    action_attempts: ActionAttempts = 10,
    worklist_hours: WorklistHours = 72.0,
    once: Once = False,
    log_level: LogLevel = "info",
    log_file: LogFile = None,
) -> None:
    """Watch a folder; triage each study once it is complete (quiet period); keep running."""
    service = _service_config(
        "watch",
        out=out,
        bundle=model,
        quiet_seconds=quiet_seconds,
        inputs=inputs,
        formats=formats,
        batch_size=batch_size,
        device=device,
        threads=threads,
        read_workers=read_workers,
        write_workers=write_workers,
        any_modality=any_modality,
        db=db,
        http_host=http_host,
        http_port=http_port,
        min_free_mb=min_free_mb,
        max_attempts=max_attempts,
        retry_base=retry_base,
        retry_max=retry_max,
        ae_title=ae_title,
        forward=forward,
        forward_kinds=forward_kinds,
        forward_max_rejections=forward_max_rejections,
        on_positive=on_positive,
        webhook=webhook,
        action_attempts=action_attempts,
        worklist_hours=worklist_hours,
        once=once,
    )
    config = WatchConfig(folder, poll=poll, poll_interval=poll_interval, rescan_seconds=rescan_seconds)
    try:
        config.check(service)
    except ConfigError as exc:
        _fail("watch", str(exc))

    def make_source(store: object, metrics: object) -> object:
        from serving.watch import FolderSource

        return FolderSource(config, store, metrics, service.quiet_seconds)  # type: ignore[arg-type]

    raise typer.Exit(_run("watch", service, make_source, (config.folder,), log_level, log_file))


@app.command()
def listen(
    out: Out,
    model: Model,
    port: Annotated[int, typer.Option(help="DICOM port to listen on.")] = 11112,
    host: Annotated[
        str, typer.Option(help="Address to bind; 0.0.0.0 for the network (needs --allow-ae).")
    ] = "127.0.0.1",
    ae_title: AeTitle = "TRIAGE",
    allow_ae: Annotated[
        str | None,
        typer.Option(help="Calling AE titles allowed to send (comma-separated); others are rejected."),
    ] = None,
    allow_any_ae: Annotated[
        bool, typer.Option(help="Accept any calling AE title on a non-loopback --host.")
    ] = False,
    quiet_seconds: Quiet = 10.0,
    inputs: Annotated[
        str,
        typer.Option(help="After a study is done, its received images are: keep (in OUT/spool) or delete."),
    ] = "delete",
    formats: Formats = FORMATS_DEFAULT,
    batch_size: BatchSize = 8,
    device: DeviceOpt = "auto",
    threads: Threads = 0,
    read_workers: ReadWorkers = 0,
    write_workers: WriteWorkers = 0,
    any_modality: AnyModality = False,
    db: Db = None,
    http_host: HttpHost = "127.0.0.1",
    http_port: HttpPort = 9120,
    min_free_mb: MinFree = 1024.0,
    max_attempts: MaxAttempts = 8,
    retry_base: RetryBase = 5.0,
    retry_max: RetryMax = 600.0,
    forward: Forward = None,
    forward_kinds: ForwardKinds = KINDS_DEFAULT,
    forward_max_rejections: ForwardRejections = 10,
    on_positive: OnPositive = None,
    webhook: Webhook = None,
    action_attempts: ActionAttempts = 10,
    worklist_hours: WorklistHours = 72.0,
    log_level: LogLevel = "info",
    log_file: LogFile = None,
) -> None:
    """DICOM listener (storage SCP): triage CR/DX studies sent to it; forward results to a PACS."""
    service = _service_config(
        "listen",
        out=out,
        bundle=model,
        quiet_seconds=quiet_seconds,
        inputs=inputs,
        formats=formats,
        batch_size=batch_size,
        device=device,
        threads=threads,
        read_workers=read_workers,
        write_workers=write_workers,
        any_modality=any_modality,
        db=db,
        http_host=http_host,
        http_port=http_port,
        min_free_mb=min_free_mb,
        max_attempts=max_attempts,
        retry_base=retry_base,
        retry_max=retry_max,
        ae_title=ae_title,
        forward=forward,
        forward_kinds=forward_kinds,
        forward_max_rejections=forward_max_rejections,
        on_positive=on_positive,
        webhook=webhook,
        action_attempts=action_attempts,
        worklist_hours=worklist_hours,
    )
    allowed = tuple(a.strip() for a in (allow_ae or "").split(",") if a.strip())
    config = ListenConfig(host=host, port=port, allow_ae=allowed, allow_any_ae=allow_any_ae)
    try:
        config.check(service)
    except ConfigError as exc:
        _fail("listen", str(exc))

    def make_source(store: object, metrics: object) -> object:
        from serving.listen import DicomSource

        return DicomSource(config, service, store, metrics)  # type: ignore[arg-type]

    raise typer.Exit(_run("listen", service, make_source, (service.out / "spool",), log_level, log_file))


@app.command()
def jobs(
    out: Annotated[Path, typer.Argument(help="The service's output folder.")],
    db: Db = None,
    show: Annotated[int, typer.Option(help="List this many recent failed / quarantined versions.")] = 20,
    requeue_failed: Annotated[
        bool, typer.Option(help="Put failed study versions back in the queue.")
    ] = False,
) -> None:
    """Job store status: study versions by state, recent failures; re-queue failed studies."""
    from serving.jobs_cmd import show_jobs

    path = db or out / "jobs.sqlite3"
    if not path.exists():
        _fail("jobs", f"no job store at {path}; point it at the --out of `triage watch` / `triage listen`")
    raise typer.Exit(show_jobs(path, show, requeue_failed))


def main(command: str, args: list[str]) -> int:
    """Run ``command`` with ``args`` (as typed after `triage COMMAND`); returns the exit status."""
    try:
        app(args=[command, *args], prog_name="triage", standalone_mode=True)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
