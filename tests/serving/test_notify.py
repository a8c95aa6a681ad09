"""Built-in on-positive notifications received by endpoints that the test starts on loopback: an MLLP
listener (HL7 v2 ORU^R01, acknowledged with hl7apy-readable ACKs) and an HTTP server standing in for a
FHIR R4 base URL. Each answers the first message with a transient error (AE / HTTP 503), so the
notification is retried and then received exactly once per positive study; a FHIR server that rejects
the resource (HTTP 422) fails the notification with the server's reason visible in `triage jobs`.
No patient data beyond the PatientID reaches either receiver."""

from __future__ import annotations

import json
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from tests.serving.conftest import Studies
from tests.serving.helpers import (
    FAST_RETRY,
    PHI,
    QUICK,
    LoopbackHTTP,
    ServiceProcess,
    query_if_ready,
    require_dicomweb_extra,
    results,
    set_identity,
    triage_jobs,
)

require_dicomweb_extra()

pytestmark = pytest.mark.slow

START, END = b"\x0b", b"\x1c\x0d"
TOKEN = "fhir-token-8c1e0b"  # must never show in a log


@dataclass
class Mllp:
    """An MLLP receiver: records every message, answers AE to the first, AA to the rest."""

    messages: list[str] = field(default_factory=list)
    sock: socket.socket = field(default_factory=socket.socket)

    def start(self) -> Mllp:
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while END not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                from hl7apy.parser import parse_message

                text = data[data.find(START) + 1 : data.find(END)].decode()
                control = parse_message(text, find_groups=False).msh.msh_10.value
                self.messages.append(text)
                code = "AE" if len(self.messages) == 1 else "AA"
                ack = (
                    f"MSH|^~\\&|RIS|HOSP|TRIAGE||20260101000000||ACK^R01^ACK|A{len(self.messages)}|P|2.5\r"
                    f"MSA|{code}|{control}|{'busy' if code == 'AE' else ''}\r"
                )
                conn.sendall(START + ack.encode() + END)

    def stop(self) -> None:
        self.sock.close()


class Fhir(LoopbackHTTP):
    """A FHIR base URL: records each POSTed body and its Authorization header; answers from ``plan``
    (status codes, the last one repeated)."""

    def __init__(self, plan: list[int]) -> None:
        self.plan = plan
        self.posts: list[tuple[dict[str, Any], str]] = []
        super().__init__(_FhirHandler)

    @property
    def url(self) -> str:
        return self.base("/fhir")


class _FhirHandler(BaseHTTPRequestHandler):
    server: Fhir

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.posts.append((body, self.headers.get("Authorization", "")))
        n = len(self.server.posts)
        status = self.server.plan[min(n, len(self.server.plan)) - 1]
        if status == 200:
            answer: dict[str, Any] = {"resourceType": "Bundle", "type": "transaction-response", "entry": []}
        else:
            answer = {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": "invalid", "diagnostics": f"profile check {status}"}],
            }
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def mllp() -> Iterator[Mllp]:
    server = Mllp().start()
    yield server
    server.stop()


def _inputs(tmp_path: Path, studies: Studies, n: int) -> Path:
    """``n`` studies with identifying values that must not reach a receiver (PatientID may)."""
    inp = tmp_path / "in"
    for path in studies.copy(tmp_path / "stage", n, start=0):
        set_identity(path, inp / path.relative_to(tmp_path / "stage"), AccessionNumber="ACC42", **PHI)
    return inp


def _watch(tmp_path: Path, inp: Path, bundle: Path, *extra: object) -> ServiceProcess:
    token = tmp_path / "fhir.auth"
    token.write_text(f"Bearer {TOKEN}\n")
    return ServiceProcess(
        "watch",
        [
            inp,
            "--out",
            tmp_path / "out",
            "--model",
            bundle,
            "--inputs",
            "keep",
            "--quiet-seconds",
            "0.3",
            *FAST_RETRY,
            "--fhir-auth-file",
            token,
            *QUICK,
            *extra,
        ],
        tmp_path / "watch.log",
    ).start()


def _actions(out: Path) -> list[tuple[Any, ...]]:
    return query_if_ready(
        out / "jobs.sqlite3", "SELECT kind, state, attempts, study_uid, last_error FROM actions ORDER BY id"
    )


def test_hl7_and_fhir_notifications_reach_local_endpoints_once_per_positive_study(
    tmp_path: Path, studies: Studies, bundle: Path, mllp: Mllp
) -> None:
    fhir = Fhir([503, 200])
    inp = _inputs(tmp_path, studies, 8)
    service = _watch(tmp_path, inp, bundle, "--on-positive-hl7", mllp.target, "--on-positive-fhir", fhir.url)
    out = tmp_path / "out"
    try:

        def settled() -> bool:
            rows = _actions(out)
            return bool(rows) and {r[1] for r in rows} == {"done"} and len(results(out)) == 8

        service.wait_until(settled, 180, "both notifications of every positive study")
        assert service.terminate() == 0
    finally:
        service.stop()
        fhir.shutdown()

    positive = {r["study_uid"]: r for r in results(out) if r["positive"]}
    assert positive, "the tiny bundle calls some of the 8 studies positive"
    rows = _actions(out)
    assert Counter(r[0] for r in rows) == {"hl7": len(positive), "fhir": len(positive)}
    assert {r[3] for r in rows} == set(positive)
    assert max(r[2] for r in rows if r[0] == "hl7") == 2 and max(r[2] for r in rows if r[0] == "fhir") == 2

    from hl7apy.parser import parse_message

    # HL7: one message per study plus the retried first one, with its control id again
    parsed = [parse_message(m, find_groups=False) for m in mllp.messages]
    assert len(parsed) == len(positive) + 1
    controls = Counter(m.msh.msh_10.value for m in parsed)
    assert controls[parsed[0].msh.msh_10.value] == 2 and len(controls) == len(positive)
    by_study: dict[str, Any] = {}
    for message in parsed:
        obx = {o.obx_3.value.split("^")[0]: o.obx_5.value for o in message.obx}
        by_study[obx["STUDYUID"]] = (message, obx)
    assert set(by_study) == set(positive)
    for study_uid, (message, obx) in by_study.items():
        record = positive[study_uid]
        assert message.msh.msh_9.value == "ORU^R01^ORU_R01"
        assert message.pid.pid_3.value == PHI["PatientID"]
        assert message.obr.obr_3.value == "ACC42"
        assert obx["PTX-DECISION"] == "POSITIVE"
        assert abs(float(obx["PTX-PROB"]) - record["probability"]) < 1e-4
        assert obx["SOPUID"] == record["sop_uid"]
        assert obx["BUNDLE"]

    # FHIR: a transaction Bundle per study (plus the one answered 503), bearer token from the file
    assert len(fhir.posts) == len(positive) + 1
    assert {auth for _, auth in fhir.posts} == {f"Bearer {TOKEN}"}
    for body, _ in fhir.posts:
        assert body["resourceType"] == "Bundle" and body["type"] == "transaction"
        kinds = [e["resource"]["resourceType"] for e in body["entry"]]
        assert kinds == ["Observation", "DiagnosticReport"]
        observation, report = (e["resource"] for e in body["entry"])
        study_uid = next(i["value"] for i in report["identifier"] if i["system"] == "urn:dicom:uid")[8:]
        assert study_uid in positive
        assert report["result"] == [{"reference": body["entry"][0]["fullUrl"]}]
        assert abs(observation["valueQuantity"]["value"] - positive[study_uid]["probability"]) < 1e-6
        assert observation["subject"] == {"identifier": {"value": PHI["PatientID"]}}

    everything = "".join(mllp.messages) + json.dumps([b for b, _ in fhir.posts])
    for value in (PHI["PatientName"].split("^")[0], PHI["PatientBirthDate"]):
        assert value not in everything, "no patient data beyond the PatientID"
    logged = service.log.read_text()
    assert TOKEN not in logged and PHI["PatientID"] not in logged


def test_a_fhir_server_that_rejects_the_resource_fails_it_with_the_reason_in_triage_jobs(
    tmp_path: Path, studies: Studies, bundle: Path
) -> None:
    fhir = Fhir([422])
    inp = _inputs(tmp_path, studies, 8)
    service = _watch(tmp_path, inp, bundle, "--on-positive-fhir", fhir.url)
    out = tmp_path / "out"
    try:

        def settled() -> bool:
            rows = _actions(out)
            return bool(rows) and {r[1] for r in rows} == {"failed"} and len(results(out)) == 8

        service.wait_until(settled, 180, "the rejected notifications")
        assert service.running(), "the service stays up"
        shown = triage_jobs(out)
        assert service.terminate() == 0
    finally:
        service.stop()
        fhir.shutdown()
    rows = _actions(out)
    assert {r[2] for r in rows} == {1}, "a rejection is not retried"
    assert all("HTTP 422" in r[4] and "profile check 422" in r[4] for r in rows)
    assert len(fhir.posts) == len(rows)
    assert shown.returncode == 0 and "HTTP 422" in shown.stdout, shown.stdout
