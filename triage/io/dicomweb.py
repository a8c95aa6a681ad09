"""DICOMweb access for the runtime: QIDO-RS search and WADO-RS retrieval into a local folder, and the
HTTP credentials shared with STOW-RS forwarding (serving/stow.py).

Built on ``dicomweb-client`` (the ``dicomweb`` extra), imported only when a DICOMweb source is used, so
the runtime without the extra starts and names the install command when one is asked for.

Credentials never come from the command line: a file (``--dicomweb-auth-file``) or an environment
variable (``--dicomweb-auth-env NAME``) holds one line, ``Bearer TOKEN`` or ``Basic USER:PASSWORD``.
The file is read again for every request, so a token refreshed on disk by another process is picked up
without a restart; the secret never appears in a message or a log line (:class:`Credentials` hides it).

Errors are :class:`DicomWebError` with a one-line message (HTTP status and reason, never the secret) and
``transient``: connection failures, timeouts, 5xx, 408, 429 and 401 (an expired token that a refresh may
fix) are transient; other 4xx are permanent; a truncated multipart body or a part that is not DICOM is
transient (the next attempt usually gets the whole answer).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from triage.errors import TriageError
from triage.outputs.paths import validated_uid

INSTALL_HINT = "needs the dicomweb extra (DICOMweb, HL7, FHIR): pip install 'triage[dicomweb]'"
DEFAULT_TIMEOUT = 60.0
PAGE = 500
MAX_PAGES = 200
_SCHEMES = ("Bearer", "Basic")
_TRANSIENT_HTTP = frozenset({401, 408, 425, 429})


class DicomWebError(Exception):
    """A DICOMweb request failed; ``transient`` says whether a later attempt may succeed."""

    def __init__(self, message: str, transient: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.transient = transient
        self.status = status


@dataclass(frozen=True)
class Credentials:
    """``Bearer TOKEN`` or ``Basic USER:PASSWORD``; repr and str never show the secret."""

    scheme: str
    secret: str

    @classmethod
    def parse(cls, text: str, where: str) -> Credentials:
        line = text.strip().splitlines()[0].strip() if text.strip() else ""
        scheme, _, secret = line.partition(" ")
        scheme = scheme.capitalize()
        secret = secret.strip()
        if scheme not in _SCHEMES or not secret or (scheme == "Basic" and ":" not in secret):
            raise ValueError(
                f"{where} must hold one line 'Bearer TOKEN' or 'Basic USER:PASSWORD' (content not shown)"
            )
        return cls(scheme, secret)

    def header(self) -> str:
        if self.scheme == "Basic":
            import base64

            return "Basic " + base64.b64encode(self.secret.encode()).decode()
        return f"Bearer {self.secret}"

    def __repr__(self) -> str:
        return f"Credentials({self.scheme}, secret hidden)"

    __str__ = __repr__


@dataclass(frozen=True)
class AuthSource:
    """Where credentials come from: a file and/or an environment variable (file first)."""

    file: Path | None = None
    env: str | None = None

    def check(self, what: str) -> None:
        """Raise ValueError with a one-line message if the source is named but unusable now."""
        if self.file is not None and not self.file.is_file():
            raise ValueError(f"{what} auth file {self.file} does not exist")
        if self.env is not None and not os.environ.get(self.env):
            raise ValueError(f"{what} auth environment variable {self.env} is not set")
        self.load(what)

    def load(self, what: str = "DICOMweb") -> Credentials | None:
        if self.file is not None:
            return Credentials.parse(self.file.read_text(encoding="utf-8"), f"{what} auth file {self.file}")
        if self.env is not None:
            value = os.environ.get(self.env, "")
            return Credentials.parse(value, f"{what} auth environment variable {self.env}")
        return None


def _require() -> Any:
    try:
        import dicomweb_client
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return dicomweb_client


def check_url(url: str, what: str = "--dicomweb") -> str:
    if not re.match(r"^https?://[^/\s@]+(/|$)", url):
        raise ValueError(
            f"{what} must be an http:// or https:// URL without credentials in it, e.g. "
            "http://pacs:8042/dicom-web (credentials go in an auth file or environment variable)"
        )
    return url.rstrip("/")


def connect(url: str, auth: AuthSource = AuthSource(), timeout: float = DEFAULT_TIMEOUT) -> Any:
    """A ``DICOMwebClient`` for ``url`` whose requests carry the current credentials and time out after
    ``timeout`` seconds; its own retries are off (callers retry with their own back-off)."""
    dicomweb_client = _require()
    import requests

    class _Session(requests.Session):
        def request(self, method: Any, url: Any, *args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("timeout", timeout)
            credentials = auth.load()
            if credentials is not None:
                headers = dict(kwargs.pop("headers", None) or {})
                headers["Authorization"] = credentials.header()
                kwargs["headers"] = headers
            return super().request(method, url, *args, **kwargs)

    client = dicomweb_client.DICOMwebClient(check_url(url), session=_Session())
    client.set_http_retry_params(retry=False)
    return client


def classify(exc: BaseException, what: str) -> DicomWebError:
    """A one-line, secret-free :class:`DicomWebError` for an exception from a DICOMweb request."""
    import requests

    if isinstance(exc, DicomWebError):
        return exc
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        status = int(exc.response.status_code)
        reason = exc.response.reason or ""
        hint = ""
        if status == 401:
            hint = " (credentials rejected or token expired; will retry with the credentials then current)"
        elif status == 403:
            hint = " (forbidden: the account lacks the permission)"
        transient = status >= 500 or status in _TRANSIENT_HTTP
        return DicomWebError(f"{what}: HTTP {status} {reason}{hint}".rstrip(), transient, status)
    if isinstance(exc, requests.Timeout):
        return DicomWebError(f"{what}: timed out", True)
    if isinstance(exc, requests.ConnectionError):
        return DicomWebError(f"{what}: cannot connect", True)
    if isinstance(exc, requests.RequestException):
        return DicomWebError(f"{what}: {type(exc).__name__}", True)
    # dicomweb-client's multipart decoding and pydicom: a truncated body or a part that is not DICOM
    return DicomWebError(f"{what}: unusable response ({type(exc).__name__}: {str(exc)[:120]})", True)


@dataclass(frozen=True)
class InstanceRef:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str | None = None


@dataclass(frozen=True)
class StudyRef:
    study_uid: str
    instances: int | None  # NumberOfStudyRelatedInstances, when the server says


def _value(item: dict[str, Any], tag: str) -> str | None:
    values = (item.get(tag) or {}).get("Value") or []
    return str(values[0]) if values else None


def _paged(search: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """Every match of a QIDO-RS search, PAGE at a time (limit / offset; at most MAX_PAGES pages).
    dicomweb-client's own ``get_remaining`` never ends against servers that ignore ``offset``."""
    items: list[dict[str, Any]] = []
    for page in range(MAX_PAGES):
        batch = list(search(limit=PAGE, offset=page * PAGE, **kwargs))
        items.extend(batch)
        if len(batch) < PAGE:
            break
    return items


def search_studies(client: Any, since: date | None = None, modalities: Sequence[str] = ()) -> list[StudyRef]:
    """Studies with ``StudyDate >= since`` and any of ``modalities`` (QIDO-RS, one search per modality),
    sorted by StudyInstanceUID."""
    base: dict[str, str] = {}
    if since is not None:
        base["StudyDate"] = f"{since:%Y%m%d}-"
    found: dict[str, int | None] = {}
    choices: list[str | None] = [*modalities] or [None]
    for modality in choices:
        filters = dict(base)
        if modality:
            filters["ModalitiesInStudy"] = modality
        try:
            items = _paged(
                client.search_for_studies,
                search_filters=filters,
                fields=["NumberOfStudyRelatedInstances"],
            )
        except Exception as exc:
            raise classify(exc, "QIDO-RS search for studies") from exc
        for item in items:
            uid = _value(item, "0020000D")
            if uid and _valid(uid):
                count = _value(item, "00201208")
                found[uid] = int(count) if count and count.isdigit() else None
    return [StudyRef(uid, found[uid]) for uid in sorted(found)]


def search_instances(client: Any, study_uid: str) -> list[InstanceRef]:
    """The instances of one study (QIDO-RS), sorted; UIDs that are not valid DICOM UIDs are skipped."""
    try:
        items = _paged(client.search_for_instances, study_instance_uid=study_uid)
    except Exception as exc:
        raise classify(exc, f"QIDO-RS search for the instances of study {study_uid}") from exc
    refs = set()
    for item in items:
        series, sop = _value(item, "0020000E"), _value(item, "00080018")
        if series and sop and _valid(series) and _valid(sop):
            refs.add(InstanceRef(study_uid, series, sop, _value(item, "00080016")))
    return sorted(refs, key=lambda r: (r.series_uid, r.sop_uid))


def _valid(uid: str) -> bool:
    try:
        validated_uid(uid, "UID")
    except TriageError:
        return False
    return True


def instance_path(folder: Path, ref: InstanceRef) -> Path:
    """``folder/<study>/<series>/<sop>.dcm`` from validated UIDs (no server value can steer a path)."""
    study = validated_uid(ref.study_uid, "StudyInstanceUID")
    series = validated_uid(ref.series_uid, "SeriesInstanceUID")
    sop = validated_uid(ref.sop_uid, "SOPInstanceUID")
    return folder / study / series / f"{sop}.dcm"


def retrieve_instance(client: Any, ref: InstanceRef, folder: Path) -> Path:
    """Retrieve one instance (WADO-RS) and write it to :func:`instance_path` atomically (temp + rename).
    The instance must be the one asked for (its SOPInstanceUID), else DicomWebError."""
    import pydicom

    target = instance_path(folder, ref)
    what = f"WADO-RS retrieve of instance {ref.sop_uid}"
    try:
        ds = client.retrieve_instance(ref.study_uid, ref.series_uid, ref.sop_uid)
    except Exception as exc:
        raise classify(exc, what) from exc
    if not isinstance(ds, pydicom.Dataset) or str(ds.get("SOPInstanceUID", "")) != ref.sop_uid:
        raise DicomWebError(f"{what}: the server answered with a different or no instance", True)
    missing = incomplete_pixels(ds)
    if missing:
        raise DicomWebError(f"{what}: truncated answer ({missing})", True)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".wado-", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            ds.save_as(fh, enforce_file_format=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


_ITEM, _SEQUENCE_END = b"\xfe\xff\x00\xe0", b"\xfe\xff\xdd\xe0"


def incomplete_pixels(ds: Any) -> str | None:
    """Why the pixel data of ``ds`` is cut short, or None. pydicom reads a truncated body without a word
    (a short PixelData value), so a retrieved instance is checked: an image (Rows) has PixelData; native
    pixel data is as long as Rows x Columns x SamplesPerPixel x NumberOfFrames x BitsAllocated / 8;
    encapsulated pixel data is whole items up to its end."""
    if "PixelData" not in ds:
        return "no pixel data" if "Rows" in ds else None
    value = bytes(ds.PixelData)
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and syntax.is_encapsulated:
        offset = 0
        while offset + 8 <= len(value) and value[offset : offset + 4] == _ITEM:
            offset += 8 + int.from_bytes(value[offset + 4 : offset + 8], "little")
        if offset == len(value) or value[offset:] == _SEQUENCE_END + bytes(4):
            return None
        return f"encapsulated pixel data ends inside an item ({len(value)} bytes)"
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
        expected = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel") or 1) * frames
        expected = expected * int(ds.BitsAllocated) // 8
    except (AttributeError, TypeError, ValueError):
        return None  # the image's own reader names what is missing
    return None if len(value) >= expected else f"pixel data {len(value)} of {expected} bytes"


def fetch_studies(client: Any, study_uids: Iterable[str], folder: Path) -> tuple[list[Path], list[str]]:
    """Retrieve every instance of the given studies into ``folder`` (already present files are kept).
    Returns (paths, errors): one error line per instance or study that could not be retrieved."""
    paths: list[Path] = []
    errors: list[str] = []
    for study_uid in study_uids:
        try:
            validated_uid(study_uid, "StudyInstanceUID")
            refs = search_instances(client, study_uid)
        except (DicomWebError, TriageError) as exc:
            errors.append(exc.message)
            continue
        if not refs:
            errors.append(f"study {study_uid}: no instances on the DICOMweb server")
        for ref in refs:
            path = instance_path(folder, ref)
            if path.is_file():
                paths.append(path)
                continue
            try:
                paths.append(retrieve_instance(client, ref, folder))
            except DicomWebError as exc:
                errors.append(exc.message)
    return paths, errors
