"""`triage predict --dicomweb URL`: retrieve studies over DICOMweb (WADO-RS; found by UID or by a QIDO-RS
query) into a cache folder, then triage them exactly as local files (docs/deploy.md)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from triage.cascade.predict import PredictOptions
    from triage.cli.predict_cmd import BatchSource


@dataclass(frozen=True)
class DicomWebInput:
    """`triage predict`'s DICOMweb source: the server, which studies, the credentials, the cache."""

    dicomweb: Annotated[
        str | None, typer.Option(help="Retrieve the inputs from this DICOMweb base URL (WADO-RS).")
    ] = None
    study: Annotated[
        list[str] | None, typer.Option(help="With --dicomweb: a StudyInstanceUID (repeat the option).")
    ] = None
    since: Annotated[
        str | None,
        typer.Option(help="With --dicomweb: the studies from this StudyDate (YYYY-MM-DD) on (QIDO-RS)."),
    ] = None
    modality: Annotated[str, typer.Option(help="With --dicomweb --since: modalities in study.")] = "CR,DX"
    dicomweb_auth_file: Annotated[
        Path | None,
        typer.Option(
            envvar="TRIAGE_DICOMWEB_AUTH_FILE", help="File with 'Bearer TOKEN' or 'Basic USER:PASSWORD'."
        ),
    ] = None
    dicomweb_auth_env: Annotated[
        str | None, typer.Option(help="Name of an environment variable holding the DICOMweb credentials.")
    ] = None
    dicomweb_cache: Annotated[
        Path | None, typer.Option(help="Keep the retrieved instances here (default: a temporary folder).")
    ] = None


def predict_dicomweb(
    source: DicomWebInput,
    model: Path,
    out: Path,
    options: PredictOptions,
    batch: Callable[[list[str]], BatchSource],
) -> int:
    """Retrieve, then run `triage predict` on the retrieved folder (``batch`` makes the batch of it, with
    the command's --shard / --engine); the exit status (2: a usage or server error, one line on stderr;
    1: some instances could not be retrieved or triaged)."""
    from triage.cli.predict_cmd import run_predict
    from triage.io.dicomweb import AuthSource, DicomWebError, connect, fetch_studies, search_studies

    def fail(message: str) -> int:
        typer.echo(f"triage predict: error: {message}", err=True)
        return 2

    if source.dicomweb is None:
        return fail("no --dicomweb URL")
    if not source.study and not source.since:
        return fail("--dicomweb needs --study UID (repeatable) or --since YYYY-MM-DD")
    auth = AuthSource(source.dicomweb_auth_file, source.dicomweb_auth_env)
    try:
        start = date.fromisoformat(source.since) if source.since else None
        auth.check("--dicomweb")
        client = connect(source.dicomweb, auth)
    except (ImportError, ValueError, OSError) as exc:
        return fail(str(exc))
    folder = source.dicomweb_cache or Path(tempfile.mkdtemp(prefix="triage-dicomweb-"))
    try:
        uids = list(source.study or [])
        if start is not None:
            modalities = [m.strip().upper() for m in source.modality.split(",") if m.strip()]
            uids += [
                s.study_uid for s in search_studies(client, start, modalities) if s.study_uid not in uids
            ]
        files, errors = fetch_studies(client, uids, folder)
        for error in errors:
            typer.echo(f"triage predict: {error}", err=True)
        typer.echo(
            f"retrieved {len(files)} instance(s) of {len(uids)} study(ies) from {source.dicomweb}", err=True
        )
        if not files:
            return fail(
                f"nothing retrieved{': ' + errors[-1] if errors else ''}" if uids else "no study matched"
            )
        status = run_predict(batch([str(folder)]), model, out, options)
        return status if status or not errors else 1
    except DicomWebError as exc:
        return fail(exc.message)
    finally:
        if source.dicomweb_cache is None:
            shutil.rmtree(folder, ignore_errors=True)
