"""Bad answers from a DICOMweb server, served by a small HTTP server that the test starts on loopback
and scripts: HTTP 4xx / 5xx, an expired token (401) refreshed in the credentials file, a truncated
multipart body, a part that is not DICOM, the wrong instance. Each is a one-line DicomWebError that says
whether a retry may help and never holds the secret; nothing half-written is left in the target folder.
The poller that meets a failing server stays up and says why in `triage jobs`."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.serving.conftest import Studies
from tests.serving.helpers import (
    QUICK,
    ROOT,
    LoopbackHTTP,
    ServiceProcess,
    query_if_ready,
    require_dicomweb_extra,
    triage_jobs,
)
from triage.io.dicomweb import (
    AuthSource,
    DicomWebError,
    InstanceRef,
    connect,
    fetch_studies,
    retrieve_instance,
    search_studies,
)

require_dicomweb_extra()
TOKEN = "tok-4f1d9a-old"
BOUNDARY = "triage-test-boundary"
Answer = tuple[int, dict[str, str], bytes]


class FakeServer(LoopbackHTTP):
    """Answers each GET with ``answer(path, headers)``; records (path, Authorization) of each request."""

    def __init__(self, answer: Callable[[str, Any], Answer]) -> None:
        self.answer = answer
        self.requests: list[tuple[str, str]] = []
        super().__init__(_Handler)

    @property
    def url(self) -> str:
        return self.base("/dicom-web")


class _Handler(BaseHTTPRequestHandler):
    server: FakeServer

    def do_GET(self) -> None:
        self.server.requests.append((self.path, self.headers.get("Authorization", "")))
        self._answer()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.requests.append((f"POST {self.path}", self.headers.get("Authorization", "")))
        self._answer()

    def _answer(self) -> None:
        status, headers, body = self.server.answer(self.path, self.headers)
        self.send_response(status)
        for key, value in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[str, Any], Answer]], FakeServer]]:
    servers: list[FakeServer] = []

    def start(answer: Callable[[str, Any], Answer]) -> FakeServer:
        servers.append(FakeServer(answer))
        return servers[-1]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _multipart(*parts: bytes, close: bool = True) -> Answer:
    body = b"".join(
        b"--" + BOUNDARY.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
        for p in parts
    )
    if close:
        body += b"--" + BOUNDARY.encode() + b"--\r\n"
    content_type = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
    return 200, {"Content-Type": content_type}, body


def _json(items: list[dict[str, Any]]) -> Answer:
    return 200, {"Content-Type": "application/dicom+json"}, json.dumps(items).encode()


def _dicom_bytes(path: Path) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmread(path).save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _ref(path: Path) -> InstanceRef:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return InstanceRef(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID)


def _auth(tmp_path: Path, token: str = TOKEN) -> AuthSource:
    path = tmp_path / "auth"
    path.write_text(f"Bearer {token}\n")
    return AuthSource(path)


@pytest.mark.parametrize(
    ("status", "transient"), [(500, True), (503, True), (429, True), (400, False), (404, False), (403, False)]
)
def test_http_errors_say_whether_a_retry_may_help(
    tmp_path: Path, serve: Any, status: int, transient: bool
) -> None:
    server = serve(lambda path, headers: (status, {}, b"no"))
    with pytest.raises(DicomWebError) as caught:
        search_studies(connect(server.url, _auth(tmp_path)), modalities=["CR"])
    assert caught.value.status == status and caught.value.transient is transient
    assert f"HTTP {status}" in caught.value.message and TOKEN not in caught.value.message
    assert server.requests[0][1] == f"Bearer {TOKEN}"


def test_an_expired_token_is_retried_with_the_token_then_in_the_file(tmp_path: Path, serve: Any) -> None:
    valid = {"token": "tok-new-77"}

    def answer(path: str, headers: Any) -> Answer:
        if headers.get("Authorization") != f"Bearer {valid['token']}":
            return 401, {"WWW-Authenticate": "Bearer"}, b""
        return _json([{"0020000D": {"vr": "UI", "Value": ["1.2.3"]}}])

    server = serve(answer)
    auth = _auth(tmp_path)
    client = connect(server.url, auth)
    with pytest.raises(DicomWebError) as caught:
        search_studies(client)
    assert caught.value.transient and "token expired" in caught.value.message
    assert TOKEN not in caught.value.message
    assert auth.file is not None
    auth.file.write_text("Bearer tok-new-77\n")  # another process refreshed it: no restart needed
    assert [s.study_uid for s in search_studies(client)] == ["1.2.3"]


def test_a_truncated_multipart_answer_or_a_part_that_is_not_dicom_leaves_nothing(
    tmp_path: Path, serve: Any, studies: Studies
) -> None:
    path = studies.files[0]
    data = _dicom_bytes(path)
    answers = {
        "cut, no closing boundary": _multipart(data[: len(data) // 2], close=False),
        "cut part, closed": _multipart(data[: len(data) // 2]),
        "not DICOM": _multipart(b"<html>proxy error</html>"),
        "empty": _multipart(),
        "wrong media type": (200, {"Content-Type": "text/html"}, b"<html>login</html>"),
    }
    for name, reply in answers.items():
        server = serve(lambda p, h, reply=reply: reply)
        target = tmp_path / name.replace(" ", "-").replace(",", "")
        with pytest.raises(DicomWebError) as caught:
            retrieve_instance(connect(server.url), _ref(path), target)
        assert caught.value.transient, name
        assert "WADO-RS" in caught.value.message and "\n" not in caught.value.message, name
        assert not target.exists() or not [p for p in target.rglob("*") if p.is_file()], name
    server = serve(lambda p, h: _multipart(data))
    written = retrieve_instance(connect(server.url), _ref(path), tmp_path / "good")
    assert pydicom.dcmread(written).SOPInstanceUID == _ref(path).sop_uid


def test_the_wrong_instance_is_refused(tmp_path: Path, serve: Any, studies: Studies) -> None:
    server = serve(lambda p, h: _multipart(_dicom_bytes(studies.files[1])))
    with pytest.raises(DicomWebError, match="different or no instance"):
        retrieve_instance(connect(server.url), _ref(studies.files[0]), tmp_path)
    assert not list(tmp_path.rglob("*.dcm"))


def test_fetch_collects_one_error_per_study_or_instance(tmp_path: Path, serve: Any, studies: Studies) -> None:
    good, bad = _ref(studies.files[0]), _ref(studies.files[1])

    def answer(path: str, headers: Any) -> Answer:
        if path.endswith("/instances") or "/instances?" in path:
            ref = good if good.study_uid in path else bad
            return _json(
                [
                    {
                        "0020000E": {"vr": "UI", "Value": [ref.series_uid]},
                        "00080018": {"vr": "UI", "Value": [ref.sop_uid]},
                    }
                ]
            )
        if good.sop_uid in path:
            return _multipart(_dicom_bytes(studies.files[0]))
        return 502, {}, b"bad gateway"

    server = serve(answer)
    paths, errors = fetch_studies(connect(server.url), [good.study_uid, bad.study_uid, "not a uid"], tmp_path)
    assert [pydicom.dcmread(p).SOPInstanceUID for p in paths] == [good.sop_uid]
    assert len(errors) == 2 and "HTTP 502" in errors[0] and "not a uid" in errors[1]


@pytest.mark.slow
def test_the_poller_stays_up_and_says_why_in_triage_jobs(tmp_path: Path, serve: Any, bundle: Path) -> None:
    server = serve(lambda p, h: (503, {}, b"maintenance"))
    auth = tmp_path / "auth"
    auth.write_text(f"Bearer {TOKEN}\n")
    out = tmp_path / "out"
    service = ServiceProcess(
        "poll",
        [server.url, "--out", out, "--model", bundle, "--auth-file", auth, "--poll-interval", "0.5",
         *QUICK],
        tmp_path / "poll.log",
    ).start()  # fmt: skip
    try:
        service.wait_until(lambda: len(server.requests) >= 3, 60, "three polls")
        service.check_alive()
        shown = triage_jobs(out)
        assert service.terminate() == 0
    finally:
        service.stop()
    assert shown.returncode == 0 and "poll:" in shown.stdout and "HTTP 503" in shown.stdout, shown.stdout
    assert TOKEN not in service.log.read_text()


@pytest.mark.slow
def test_a_stow_server_that_refuses_gives_up_after_the_limit_with_the_reason_in_triage_jobs(
    tmp_path: Path, serve: Any, studies: Studies, bundle: Path
) -> None:
    server = serve(lambda p, h: (400, {}, b"bad request"))
    studies.copy(tmp_path / "in", 1)
    auth = tmp_path / "auth"
    auth.write_text(f"Bearer {TOKEN}\n")
    out = tmp_path / "out"
    service = ServiceProcess(
        "watch",
        [tmp_path / "in", "--out", out, "--model", bundle, "--forward-stow", server.url, "--stow-auth-file",
         auth, "--forward-max-rejections", "2", "--retry-base", "0.2", "--retry-max", "0.5",
         "--quiet-seconds", "0.3", *QUICK],
        tmp_path / "watch.log",
    ).start()  # fmt: skip
    try:

        def given_up() -> bool:
            states = query_if_ready(out / "jobs.sqlite3", "SELECT state FROM outbox")
            return bool(states) and {s for (s,) in states} == {"rejected"}

        service.wait_until(given_up, 120, "the refused objects to be given up")
        shown = triage_jobs(out)
        assert service.terminate() == 0, "the service stays up"
    finally:
        service.stop()
    attempts = query_if_ready(out / "jobs.sqlite3", "SELECT attempts FROM outbox")
    assert len(attempts) >= 2 and {a for (a,) in attempts} == {2}, "--forward-max-rejections 2"
    posts = [r for r in server.requests if r[0].startswith("POST ")]
    assert 2 <= len(posts) <= 2 * len(attempts) and {a for _, a in posts} == {f"Bearer {TOKEN}"}
    assert "outbox stow: rejected" in shown.stdout and "HTTP 400" in shown.stdout, shown.stdout


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
def test_cut_pixel_data_is_found_native_and_encapsulated(studies: Studies) -> None:
    from pydicom.uid import RLELossless

    from triage.io.dicomweb import incomplete_pixels

    native = pydicom.dcmread(studies.files[0])
    rle = pydicom.dcmread(studies.files[0])
    rle.compress(RLELossless)
    for ds in (native, rle):
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        data = buffer.getvalue()
        assert incomplete_pixels(pydicom.dcmread(io.BytesIO(data))) is None
        for cut in (len(data) - 9, len(data) - 100, len(data) // 2):  # -9: into the last pixel byte
            cut_short = pydicom.dcmread(io.BytesIO(data[:cut]))
            # pydicom keeps a short PixelData, drops it, or (encapsulated, no delimiter) drops everything:
            # retrieve_instance refuses a dataset without the SOPInstanceUID asked for, and these
            assert "SOPInstanceUID" not in cut_short or incomplete_pixels(cut_short) is not None, cut


def test_without_the_dicomweb_extra_each_option_names_the_install_command(tmp_path: Path) -> None:
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(
        "import sys\nclass B:\n    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('dicomweb_client', 'hl7apy', 'fhir'):\n"
        "            raise ImportError(name)\nsys.meta_path.insert(0, B())\n"
    )
    common = ["--out", tmp_path / "out", "--model", tmp_path / "bundle"]
    calls = {
        "dicomweb_client": ["watch", tmp_path, *common, "--forward-stow", "http://127.0.0.1:9/dicom-web"],
        "hl7apy": ["watch", tmp_path, *common, "--on-positive-hl7", "127.0.0.1:2575"],
        "fhir.resources": ["listen", *common, "--on-positive-fhir", "http://127.0.0.1:9/fhir"],
        "": ["predict", "--dicomweb", "http://127.0.0.1:9/dicom-web", "--study", "1.2.3", *common],
    }
    for module, args in calls.items():
        proc = subprocess.run(
            [sys.executable, "-m", "triage.cli.main", *map(str, args)],
            capture_output=True,
            text=True,
            check=False,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": f"{tmp_path}:{ROOT}"},
        )
        assert proc.returncode == 2, (module, proc.stderr)
        [line] = proc.stderr.strip().splitlines()
        assert "pip install 'triage[dicomweb]'" in line and module in line, line
