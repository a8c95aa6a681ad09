"""Service settings, validated on construction: a bad value raises ConfigError naming it and the valid
range, which the CLI prints as a one-line error (exit status 2)."""

from __future__ import annotations

import importlib.util
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from triage.io.codestream import DEFAULT_MAX_PIXELS
from triage.io.dicomweb import INSTALL_HINT, AuthSource, check_url
from triage.outputs.formats import SERVICE_DEFAULT, check_formats

InputPolicy = Literal["keep", "move", "delete"]
INPUT_POLICIES: tuple[InputPolicy, ...] = ("keep", "move", "delete")
FORWARD_KINDS = ("seg", "sc", "sr")
DB_NAME = "jobs.sqlite3"


class ConfigError(ValueError):
    """A setting is invalid; the message names it, the value and what is valid."""


def check_ae_title(value: str, what: str = "AE title") -> str:
    """A DICOM AE title: 1–16 characters of printable ASCII, no backslash, not only spaces."""
    title = value.strip()
    if not title or len(title) > 16 or "\\" in title or not all(32 <= ord(ch) < 127 for ch in title):
        raise ConfigError(
            f"{what} {value!r} is invalid: 1 to 16 printable ASCII characters without backslash"
        )
    return title


@dataclass(frozen=True)
class Destination:
    """A DICOM node to C-STORE results to: ``HOST:PORT:AET``."""

    host: str
    port: int
    ae_title: str

    @classmethod
    def parse(cls, text: str) -> Destination:
        parts = text.rsplit(":", 2)
        if len(parts) != 3 or not parts[0]:
            raise ConfigError(f"--forward {text!r} must be HOST:PORT:AET, e.g. pacs.example.org:104:PACS")
        host, port, aet = parts
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError(f"--forward port {port!r} must be a number from 1 to 65535")
        return cls(host.strip("[]"), int(port), check_ae_title(aet, "--forward AE title"))

    def __str__(self) -> str:
        return f"{self.host}:{self.port}:{self.ae_title}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class TlsSettings:
    """DICOM TLS (PS3.15 Annex B) for the listener and the C-STORE forwarder: PEM files.

    cert / key: our certificate and private key (the listener's server certificate; presented to the
        PACS by the forwarder when given). ca: the CA bundle that peers' certificates must chain to:
        the listener then requires a client certificate from every caller, the forwarder checks the
        PACS's certificate (and its host name / IP) against it instead of the system's trust store.
    """

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.cert is not None or self.ca is not None

    def check(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ConfigError("--tls-cert and --tls-key go together (PEM certificate and its private key)")
        for flag, path in (("--tls-cert", self.cert), ("--tls-key", self.key), ("--tls-ca", self.ca)):
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"{flag} {path} is not a readable file")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # the parent package (fhir) is missing
        return False


def parse_host_port(text: str, flag: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"{flag} {text!r} must be HOST:PORT, e.g. ris.example.org:2575")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class ServiceConfig:
    """Settings shared by `triage watch` and `triage listen`.

    quiet_seconds: a study is complete when none of its files arrived or changed for this long.
    inputs: what happens to an input file once its study is done (quarantined files are always moved).
    min_free_mb: below this much free space in ``out`` no study is started and the listener answers
        "out of resources" (0xA700); processing resumes by itself when space is freed.
    max_attempts / retry_base / retry_max: transient failures (disk full, I/O errors, model errors) are
        retried after retry_base·2^(n−1) seconds (at most retry_max), up to max_attempts; then failed.
    forward / forward_kinds / ae_title: C-STORE these outputs to this node, calling as ae_title.
    forward_stow / stow_auth: STOW-RS results to this DICOMweb base URL, credentials from a file or an
        environment variable (never the command line); each destination has its own outbox rows.
    on_positive / webhook: run this shell command / POST to this URL once per positive study.
    on_positive_hl7 / on_positive_fhir (fhir_auth): send an HL7 v2 ORU^R01 over MLLP to HOST:PORT /
        a FHIR R4 DiagnosticReport + Observation to this base URL once per positive study.
    tls: DICOM TLS for the listener and the C-STORE forwarder.
    worklist_hours: worklist.csv lists the studies finished in this many past hours.
    once: exit once everything present has been processed (the queue is empty).
    """

    out: Path
    bundle: Path
    quiet_seconds: float = 10.0
    inputs: InputPolicy = "keep"
    formats: frozenset[str] = SERVICE_DEFAULT  # triage/outputs/formats.py
    batch_size: int = 8
    device: str = "auto"
    threads: int | None = None
    read_workers: int | None = None
    write_workers: int | None = None
    any_modality: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    db: Path | None = None
    http_host: str = "127.0.0.1"
    http_port: int = 9120
    min_free_mb: float = 1024.0
    max_attempts: int = 8
    retry_base: float = 5.0
    retry_max: float = 600.0
    ae_title: str = "TRIAGE"
    forward: Destination | None = None
    forward_kinds: frozenset[str] = frozenset(FORWARD_KINDS)
    forward_max_rejections: int = 10
    forward_stow: str | None = None
    stow_auth: AuthSource = field(default_factory=AuthSource)
    on_positive: str | None = None
    webhook: str | None = None
    on_positive_hl7: str | None = None
    on_positive_fhir: str | None = None
    fhir_auth: AuthSource = field(default_factory=AuthSource)
    tls: TlsSettings = TlsSettings()
    action_attempts: int = 10
    worklist_hours: float = 72.0
    once: bool = False

    def __post_init__(self) -> None:
        if not self.quiet_seconds >= 0:
            raise ConfigError(f"--quiet-seconds must be 0 or more, got {self.quiet_seconds}")
        if self.inputs not in INPUT_POLICIES:
            raise ConfigError(f"--inputs must be one of {', '.join(INPUT_POLICIES)}, got {self.inputs!r}")
        try:
            check_formats(self.formats)
        except ValueError as exc:
            raise ConfigError(f"--format: {exc}") from None
        if not self.formats:
            raise ConfigError("--format names no output; give at least one, e.g. --format png,seg")
        for name in ("threads", "read_workers", "write_workers"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(
                    f"--{name.replace('_', '-')} must be at least 1 (or automatic), got {value}"
                )
        bad = sorted(set(self.forward_kinds) - set(FORWARD_KINDS))
        if bad:
            raise ConfigError(f"--forward-kinds {bad} invalid; valid: {', '.join(FORWARD_KINDS)}")
        if self.forwarding and not set(self.forward_kinds) & set(self.formats):
            raise ConfigError(
                f"--forward / --forward-stow send {sorted(self.forward_kinds)} but --format writes none of"
                " them; "
                "add seg, sc or sr"
            )
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        if not 0 <= self.http_port <= 65535:
            raise ConfigError(f"--http-port must be 0 (off) or 1..65535, got {self.http_port}")
        if self.max_attempts < 1 or self.action_attempts < 1 or self.forward_max_rejections < 1:
            raise ConfigError(
                "--max-attempts, --action-attempts and --forward-max-rejections must be at least 1"
            )
        if not 0 < self.retry_base <= self.retry_max:
            raise ConfigError(
                f"need 0 < --retry-base <= --retry-max, got {self.retry_base} and {self.retry_max}"
            )
        if self.min_free_mb < 0:
            raise ConfigError(f"--min-free-mb must be 0 or more, got {self.min_free_mb}")
        if self.webhook is not None and not self.webhook.startswith(("http://", "https://")):
            raise ConfigError(f"--webhook {self.webhook!r} must be an http:// or https:// URL")
        check_ae_title(self.ae_title, "--ae-title")
        try:
            if self.forward_stow is not None:
                check_url(self.forward_stow, "--forward-stow")
                self.stow_auth.check("--forward-stow")
            if self.on_positive_fhir is not None:
                check_url(self.on_positive_fhir, "--on-positive-fhir")
                self.fhir_auth.check("--on-positive-fhir")
        except (ValueError, OSError) as exc:
            raise ConfigError(str(exc)) from None
        if self.on_positive_hl7 is not None:
            parse_host_port(self.on_positive_hl7, "--on-positive-hl7")
        for flag, value, module in (
            ("--forward-stow", self.forward_stow, "dicomweb_client"),
            ("--on-positive-hl7", self.on_positive_hl7, "hl7apy"),
            ("--on-positive-fhir", self.on_positive_fhir, "fhir.resources"),
        ):
            if value is not None and not _installed(module):
                raise ConfigError(f"{flag}: {INSTALL_HINT} ({module} is not installed)")
        self.tls.check()

    @property
    def destinations(self) -> tuple[str, ...]:
        """Outbox destinations: "dimse" (--forward, C-STORE) and / or "stow" (--forward-stow)."""
        return (("dimse",) if self.forward else ()) + (("stow",) if self.forward_stow else ())

    @property
    def forwarding(self) -> bool:
        return bool(self.destinations)

    def positive_actions(self) -> list[tuple[str, str]]:
        """(kind, target) of each action run once per positive study."""
        actions = [
            ("command", self.on_positive),
            ("webhook", self.webhook),
            ("hl7", self.on_positive_hl7),
            ("fhir", self.on_positive_fhir),
        ]
        return [(kind, target) for kind, target in actions if target]

    @property
    def db_path(self) -> Path:
        return self.db or self.out / DB_NAME


@dataclass(frozen=True)
class WatchConfig:
    """`triage watch` specifics: the folder, inotify or polling, and the periodic full re-scan."""

    folder: Path
    poll: bool = False
    poll_interval: float = 2.0
    rescan_seconds: float = 300.0

    def check(self, service: ServiceConfig) -> None:
        if not self.folder.is_dir():
            raise ConfigError(f"IN {self.folder} is not a folder")
        if self.poll_interval <= 0:
            raise ConfigError(f"--poll-interval must be positive, got {self.poll_interval}")
        if self.rescan_seconds < 0:
            raise ConfigError(f"--rescan-seconds must be 0 (off) or positive, got {self.rescan_seconds}")
        folder, out = self.folder.resolve(), service.out.resolve()
        if out == folder or out.is_relative_to(folder):
            raise ConfigError(f"--out {service.out} must not be inside the watched folder {self.folder}")
        if not os.access(folder, os.R_OK | os.X_OK):
            raise ConfigError(f"IN {self.folder} cannot be read")


@dataclass(frozen=True)
class ListenConfig:
    """`triage listen` specifics: where to listen, who may call, and the quiet period per study."""

    host: str = "127.0.0.1"
    port: int = 11112
    allow_ae: tuple[str, ...] = ()
    allow_any_ae: bool = False

    def check(self, service: ServiceConfig) -> None:
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"--port must be 1..65535, got {self.port}")
        for title in self.allow_ae:
            check_ae_title(title, "--allow-ae title")
        if not is_loopback(self.host) and not self.allow_ae and not self.allow_any_ae:
            raise ConfigError(
                f"--host {self.host} accepts connections from the network: name the modalities that may "
                "send with --allow-ae AET1,AET2 (or pass --allow-any-ae to accept any calling AE title)"
            )
        if service.inputs == "move":
            raise ConfigError("--inputs move is for `triage watch`; the listener keeps or deletes its spool")
