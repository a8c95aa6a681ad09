"""The commands of the ``serving`` package: `triage watch`, `triage listen`, `triage poll` and `triage jobs`,
registered with ``triage`` through the ``triage.commands`` entry-point group (pyproject.toml).

The options the two services share are declared once (:class:`ServiceOptions`). This module imports no
watchdog, pynetdicom or prometheus-client (the services import them when they start), so ``triage --help``
stays fast. Exit status: 0 stopped cleanly, 1 a component died, 2 a bad setting or a bundle / output
folder that cannot be used (one line on stderr naming it).
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, NoReturn

import typer

from serving.config import FORWARD_KINDS, ConfigError, ListenConfig, WatchConfig
from serving.logs import LogLevel, setup_logging
from triage.cli.options import Device, option_sets
from triage.outputs.formats import HELP as FORMATS_HELP
from triage.outputs.formats import SERVICE_DEFAULT, format_option

if TYPE_CHECKING:
    from serving.config import InputPolicy, ServiceConfig

FORMATS_DEFAULT = format_option(SERVICE_DEFAULT)
KINDS_DEFAULT = ",".join(FORWARD_KINDS)
PANEL = "Services"

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True)

Db = Annotated[Path | None, typer.Option(help="Job store (SQLite); default OUT/jobs.sqlite3.")]
AeTitle = Annotated[str, typer.Option(help="Our DICOM AE title (called by modalities, calling the PACS).")]


@dataclass(frozen=True)
class ServiceOptions:
    """The options `triage watch` and `triage listen` share: model, outputs, job store, retries,
    forwarding, actions, metrics and logs."""

    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output folder: results, worklist, studies/, job store.")
    ]
    model: Annotated[Path, typer.Option("--model", "-m", help="Model bundle folder (card.json + models).")]
    quiet_seconds: Annotated[
        float,
        typer.Option(min=0.0, help="A study is complete when none of its files changed for this long (s)."),
    ] = 10.0
    formats: Annotated[str, typer.Option("--format", help=FORMATS_HELP)] = FORMATS_DEFAULT
    batch_size: Annotated[int, typer.Option(min=1, help="Images per model call.")] = 8
    device: Annotated[Device, typer.Option(help="Where the models run.")] = "auto"
    threads: Annotated[int, typer.Option(min=0, help="ONNX Runtime threads; 0 = the cores available.")] = 0
    read_workers: Annotated[
        int, typer.Option(min=0, help="DICOM decode/preprocess threads; 0 = automatic.")
    ] = 0
    write_workers: Annotated[int, typer.Option(min=0, help="Output-writing threads; 0 = automatic.")] = 0
    any_modality: Annotated[
        bool, typer.Option(help="Accept modalities other than CR / DX for presentation.")
    ] = False
    max_pixels: Annotated[
        int, typer.Option(min=1, help="Largest image accepted, in decoded pixels (checked before decoding).")
    ] = 40_000_000  # triage.io.codestream.DEFAULT_MAX_PIXELS (not imported: keeps start-up fast)
    db: Db = None
    http_host: Annotated[
        str, typer.Option(envvar="TRIAGE_HTTP_HOST", help="Address of the /metrics and /healthz endpoint.")
    ] = "127.0.0.1"
    http_port: Annotated[
        int,
        typer.Option(
            min=0, max=65535, envvar="TRIAGE_HTTP_PORT", help="Port of /metrics and /healthz; 0 turns it off."
        ),
    ] = 9120
    min_free_mb: Annotated[
        float,
        typer.Option(min=0.0, help="Below this many MB free in OUT: no new studies, C-STORE answers 0xA700."),
    ] = 1024.0
    max_attempts: Annotated[
        int, typer.Option(min=1, help="Attempts per study for transient failures (disk full, I/O).")
    ] = 8
    retry_base: Annotated[
        float, typer.Option(help="First retry delay in seconds (doubles each attempt).")
    ] = 5.0
    retry_max: Annotated[
        float, typer.Option(help="Longest retry delay in seconds (studies, PACS, actions).")
    ] = 600.0
    ae_title: AeTitle = "TRIAGE"
    forward: Annotated[str | None, typer.Option(help="C-STORE results to this PACS: HOST:PORT:AET.")] = None
    forward_kinds: Annotated[
        str, typer.Option(help="Which outputs to forward: seg, sc, sr (comma-separated).")
    ] = KINDS_DEFAULT
    forward_max_rejections: Annotated[
        int, typer.Option(min=1, help="Give up on an object the PACS refuses this many times.")
    ] = 10
    on_positive: Annotated[
        str | None,
        typer.Option(help="Shell command run once per positive study; its result record (JSON) on stdin."),
    ] = None
    webhook: Annotated[
        str | None, typer.Option(help="URL to POST the result record (JSON) of each positive study to.")
    ] = None
    action_attempts: Annotated[
        int, typer.Option(min=1, help="Attempts per on-positive command / webhook / HL7 / FHIR message.")
    ] = 10
    forward_stow: Annotated[
        str | None,
        typer.Option(help="STOW-RS results to this DICOMweb base URL (e.g. http://pacs:8042/dicom-web)."),
    ] = None
    stow_auth_file: Annotated[
        Path | None,
        typer.Option(envvar="TRIAGE_STOW_AUTH_FILE", help="File: 'Bearer TOKEN' or 'Basic USER:PASSWORD'."),
    ] = None
    stow_auth_env: Annotated[
        str | None, typer.Option(help="Name of an environment variable holding the STOW-RS credentials.")
    ] = None
    on_positive_hl7: Annotated[
        str | None, typer.Option(help="HL7 v2 ORU^R01 over MLLP per positive study to HOST:PORT.")
    ] = None
    on_positive_fhir: Annotated[
        str | None, typer.Option(help="FHIR R4 DiagnosticReport + Observation per positive study: base URL.")
    ] = None
    fhir_auth_file: Annotated[
        Path | None,
        typer.Option(envvar="TRIAGE_FHIR_AUTH_FILE", help="File with the FHIR server's credentials."),
    ] = None
    fhir_auth_env: Annotated[
        str | None, typer.Option(help="Name of an environment variable holding the FHIR credentials.")
    ] = None
    tls_cert: Annotated[
        Path | None, typer.Option(envvar="TRIAGE_TLS_CERT", help="DICOM TLS: our certificate (PEM).")
    ] = None
    tls_key: Annotated[
        Path | None, typer.Option(envvar="TRIAGE_TLS_KEY", help="DICOM TLS: our private key (PEM).")
    ] = None
    tls_ca: Annotated[
        Path | None,
        typer.Option(envvar="TRIAGE_TLS_CA", help="DICOM TLS: the CA that peers' certificates chain to."),
    ] = None
    worklist_hours: Annotated[
        float, typer.Option(help="worklist.csv lists studies finished in this many hours.")
    ] = 72.0
    log_level: Annotated[LogLevel, typer.Option(help="Log level.")] = "info"
    log_file: Annotated[Path | None, typer.Option(help="Also write the JSON-lines log to this file.")] = None

    def service_config(self, command: str, inputs: InputPolicy, once: bool = False) -> ServiceConfig:
        """The validated :class:`ServiceConfig`; a bad value exits 2 with one line naming it."""
        from serving.config import Destination, ServiceConfig, TlsSettings
        from triage.io.dicomweb import AuthSource

        values = asdict(self)
        for key in ("model", "formats", "forward_kinds", "forward", "log_level", "log_file"):
            values.pop(key)
        for key in ("stow", "fhir"):
            values[f"{key}_auth"] = AuthSource(values.pop(f"{key}_auth_file"), values.pop(f"{key}_auth_env"))
        values["tls"] = TlsSettings(values.pop("tls_cert"), values.pop("tls_key"), values.pop("tls_ca"))
        for key in ("threads", "read_workers", "write_workers"):
            values[key] = values[key] or None  # 0 = automatic
        try:
            return ServiceConfig(
                bundle=self.model,
                inputs=inputs,
                once=once,
                formats=_split(self.formats),
                forward_kinds=_split(self.forward_kinds),
                forward=Destination.parse(self.forward) if self.forward else None,
                **values,
            )
        except ConfigError as exc:
            _fail(command, str(exc))


def _split(text: str) -> frozenset[str]:
    return frozenset(part.strip() for part in text.split(",") if part.strip())


def _fail(command: str, message: str) -> NoReturn:
    typer.echo(f"triage {command}: error: {message}", err=True)
    raise typer.Exit(2)


def _run(
    command: str,
    service: ServiceConfig,
    make_source: object,
    roots: tuple[Path, ...],
    options: ServiceOptions,
) -> int:
    from serving.service import Service, fatal_message
    from serving.store import StoreError
    from triage.errors import TriageError

    setup_logging(options.log_level, options.log_file)
    try:
        return Service(service, make_source, roots).run()  # type: ignore[arg-type]
    except (ConfigError, TriageError, StoreError) as exc:
        typer.echo(f"triage {command}: error: {fatal_message(exc)}", err=True)
        return 2


@app.command(rich_help_panel=PANEL)
@option_sets
def watch(
    folder: Annotated[Path, typer.Argument(help="Folder to watch (recursively) for DICOM files.")],
    options: ServiceOptions,
    poll: Annotated[
        bool, typer.Option(help="Poll instead of inotify (network shares give no events).")
    ] = False,
    poll_interval: Annotated[float, typer.Option(help="Seconds between polls with --poll.")] = 2.0,
    rescan_seconds: Annotated[
        float, typer.Option(help="Full re-scan of the folder every N seconds; 0 = only at start-up.")
    ] = 300.0,
    inputs: Annotated[
        Literal["keep", "move", "delete"],
        typer.Option(help="After a study is done, its files are kept, moved (to OUT/processed) or deleted."),
    ] = "keep",
    once: Annotated[bool, typer.Option(help="Exit once everything present has been processed.")] = False,
) -> None:
    """Folder watcher service: triage each complete study.

    A study is complete when none of its files changed for --quiet-seconds; runs until stopped (or --once).
    """
    service = options.service_config("watch", inputs, once)
    config = WatchConfig(folder, poll=poll, poll_interval=poll_interval, rescan_seconds=rescan_seconds)
    try:
        config.check(service)
    except ConfigError as exc:
        _fail("watch", str(exc))

    def make_source(store: object, metrics: object) -> object:
        from serving.watch import FolderSource

        return FolderSource(config, store, metrics, service.quiet_seconds)  # type: ignore[arg-type]

    raise typer.Exit(_run("watch", service, make_source, (config.folder,), options))


@app.command(rich_help_panel=PANEL)
@option_sets
def listen(
    options: ServiceOptions,
    port: Annotated[int, typer.Option(min=1, max=65535, help="DICOM port to listen on.")] = 11112,
    host: Annotated[
        str, typer.Option(help="Address to bind; 0.0.0.0 for the network (needs --allow-ae).")
    ] = "127.0.0.1",
    allow_ae: Annotated[
        str | None,
        typer.Option(help="Calling AE titles allowed to send (comma-separated); others are rejected."),
    ] = None,
    allow_any_ae: Annotated[
        bool, typer.Option(help="Accept any calling AE title on a non-loopback --host.")
    ] = False,
    inputs: Annotated[
        Literal["keep", "delete"],
        typer.Option(help="After a study is done, its received images are kept (in OUT/spool) or deleted."),
    ] = "delete",
) -> None:
    """DICOM listener service: triage the studies sent to it.

    A storage SCP for CR/DX studies; the results can be forwarded to a PACS (--forward).
    """
    service = options.service_config("listen", inputs)
    allowed = tuple(a.strip() for a in (allow_ae or "").split(",") if a.strip())
    config = ListenConfig(host=host, port=port, allow_ae=allowed, allow_any_ae=allow_any_ae)
    try:
        config.check(service)
    except ConfigError as exc:
        _fail("listen", str(exc))

    def make_source(store: object, metrics: object) -> object:
        from serving.listen import DicomSource

        return DicomSource(config, service, store, metrics)  # type: ignore[arg-type]

    raise typer.Exit(_run("listen", service, make_source, (service.out / "spool",), options))


@dataclass(frozen=True)
class PollOptions:
    """`triage poll`'s own options: where and how often to ask, which studies, the credentials."""

    poll_interval: Annotated[float, typer.Option(min=0.1, help="Seconds between two polls.")] = 30.0
    since: Annotated[
        str | None,
        typer.Option(help="Studies from this StudyDate (YYYY-MM-DD) on; default: today - lookback."),
    ] = None
    lookback_days: Annotated[int, typer.Option(min=0, help="Without --since: the last N days.")] = 1
    modality: Annotated[str, typer.Option(help="Modalities in study to ask for (comma-separated).")] = "CR,DX"
    auth_file: Annotated[
        Path | None,
        typer.Option(
            envvar="TRIAGE_DICOMWEB_AUTH_FILE", help="File with 'Bearer TOKEN' or 'Basic USER:PASSWORD'."
        ),
    ] = None
    auth_env: Annotated[
        str | None, typer.Option(help="Name of an environment variable holding the DICOMweb credentials.")
    ] = None


@app.command(rich_help_panel=PANEL)
@option_sets
def poll(
    url: Annotated[str, typer.Argument(help="DICOMweb base URL to poll (QIDO-RS / WADO-RS).")],
    options: ServiceOptions,
    polling: PollOptions,
    inputs: Annotated[
        Literal["keep", "delete"],
        typer.Option(help="After a study is done, its retrieved images are kept (in OUT/spool) or deleted."),
    ] = "delete",
    once: Annotated[bool, typer.Option(help="Exit once everything found has been processed.")] = False,
) -> None:
    """DICOMweb poller: triage the new studies of a server.

    Asks (QIDO-RS) for new CR/DX studies every --poll-interval, retrieves (WADO-RS) the images not taken in
    yet, and triages each study once, as `triage listen` does with the studies sent to it.
    """
    from datetime import date

    from serving.poll import PollConfig
    from triage.io.dicomweb import AuthSource

    service = options.service_config("poll", inputs, once)
    try:
        start = date.fromisoformat(polling.since) if polling.since else None
    except ValueError:
        _fail("poll", f"--since {polling.since!r} must be a date YYYY-MM-DD")
    modalities = tuple(m.strip().upper() for m in polling.modality.split(",") if m.strip())
    auth = AuthSource(polling.auth_file, polling.auth_env)
    config = PollConfig(url, polling.poll_interval, start, polling.lookback_days, modalities, auth)
    try:
        config.check(service)
    except ConfigError as exc:
        _fail("poll", str(exc))

    def make_source(store: object, metrics: object) -> object:
        from serving.poll import PollSource

        return PollSource(config, service, store, metrics)  # type: ignore[arg-type]

    raise typer.Exit(_run("poll", service, make_source, (service.out / "spool",), options))


@app.command(rich_help_panel=PANEL)
def jobs(
    out: Annotated[Path, typer.Argument(help="The service's output folder.")],
    db: Db = None,
    show: Annotated[
        int, typer.Option(min=0, help="List this many recent failed / quarantined versions.")
    ] = 20,
    requeue_failed: Annotated[
        bool, typer.Option(help="Put failed study versions back in the queue.")
    ] = False,
) -> None:
    """Show a service's job store; re-queue failed studies.

    Study versions by state and the recent failures of a watch / listen service.
    """
    from serving.jobs_cmd import show_jobs

    path = db or out / "jobs.sqlite3"
    if not path.exists():
        _fail("jobs", f"no job store at {path}; point it at the --out of `triage watch` / `listen` / `poll`")
    raise typer.Exit(show_jobs(path, show, requeue_failed))


def main(command: str, args: list[str]) -> int:
    """`triage COMMAND ARGS` (through the root, as typed); returns the exit status."""
    from triage.cli.main import app as triage

    try:
        triage(args=[command, *args], prog_name="triage", standalone_mode=True)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
