"""`triage predict --dicomweb URL`: retrieve studies over DICOMweb (WADO-RS; found by UID or by a QIDO-RS
query) into a cache folder, then triage them exactly as local files."""

from __future__ import annotations

import shutil
import tempfile
from datetime import date
from pathlib import Path

import typer

from triage.cascade.predict import PredictOptions
from triage.cli.predict_cmd import run_predict
from triage.io.dicomweb import AuthSource, DicomWebError, connect, fetch_studies, search_studies


def predict_dicomweb(
    url: str,
    studies: list[str],
    since: str | None,
    modality: str,
    auth: tuple[Path | None, str | None],
    cache: Path | None,
    paths: list[str],
    model: Path,
    out: Path,
    options: PredictOptions,
) -> int:
    def fail(message: str) -> int:
        typer.echo(f"triage predict: error: {message}", err=True)
        return 2

    if paths:
        return fail("give either local paths or --dicomweb, not both")
    if not studies and not since:
        return fail("--dicomweb needs --study UID (repeatable) or --since YYYY-MM-DD")
    source = AuthSource(*auth)
    try:
        start = date.fromisoformat(since) if since else None
        source.check("--dicomweb")
        client = connect(url, source)
    except ImportError as exc:
        return fail(str(exc))
    except (ValueError, OSError) as exc:
        return fail(str(exc))
    folder = cache or Path(tempfile.mkdtemp(prefix="triage-dicomweb-"))
    try:
        uids = list(studies)
        if start is not None:
            modalities = [m.strip().upper() for m in modality.split(",") if m.strip()]
            uids += [
                s.study_uid for s in search_studies(client, start, modalities) if s.study_uid not in uids
            ]
        files, errors = fetch_studies(client, uids, folder)
        for error in errors:
            typer.echo(f"triage predict: {error}", err=True)
        typer.echo(f"retrieved {len(files)} instance(s) of {len(uids)} study(ies) from {url}", err=True)
        if not files:
            return fail("nothing retrieved") if uids else fail("no study matched")
        status = run_predict([str(folder)], model, out, options)
        return status if status or not errors else 1
    except DicomWebError as exc:
        return fail(exc.message)
    finally:
        if cache is None:
            shutil.rmtree(folder, ignore_errors=True)
