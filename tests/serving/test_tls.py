"""DICOM TLS (PS3.15 Annex B) on the listener and the C-STORE forwarder, with certificates made by the
test (openssl): a CA, a certificate for 127.0.0.1 signed by it, and a second, unrelated CA.

The listener (--tls-cert/--tls-key/--tls-ca, here from the environment as a systemd env file sets them)
accepts an association from a peer that trusts the CA and presents a certificate of it, and refuses one
that does not trust the CA, one that presents a certificate of another CA, and one without TLS. The
forwarder delivers to a TLS PACS whose certificate chains to the CA, and delivers nothing while that
PACS presents a certificate of another CA (retried until the right certificate is back)."""

from __future__ import annotations

import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.serving.conftest import Studies
from tests.serving.helpers import (
    FAST_RETRY,
    QUICK,
    ServiceProcess,
    free_port,
    job_states,
    query_if_ready,
    require_tool,
    wait_until,
)

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path  # for 127.0.0.1, signed by ca (server and client use)
    key: Path
    other_ca: Path
    other_cert: Path  # for 127.0.0.1, signed by other_ca
    other_key: Path


def _openssl(*args: object) -> None:
    tool = require_tool("openssl", "openssl")
    subprocess.run([tool, *map(str, args)], check=True, capture_output=True)


def _make_leaf(folder: Path, name: str, ca_key: Path, ca_cert: Path) -> tuple[Path, Path]:
    key, csr, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.crt"
    ext = folder / f"{name}.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    _openssl(
        "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={name}"
    )
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial",
        "-out", cert, "-days", "2", "-extfile", ext,
    )  # fmt: skip
    return key, cert


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    cas = {}
    for name in ("ca", "other-ca"):
        key, cert = folder / f"{name}.key", folder / f"{name}.crt"
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "2",
            "-subj", f"/CN=triage test {name}", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
        cas[name] = (key, cert)
    key, cert = _make_leaf(folder, "node", *cas["ca"])
    other_key, other_cert = _make_leaf(folder, "rogue", *cas["other-ca"])
    return Pki(cas["ca"][1], cert, key, cas["other-ca"][1], other_cert, other_key)


def _client(ca: Path | None, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca else None)
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def _associate(port: int, context: ssl.SSLContext | None) -> bool:
    ae = AE(ae_title="CR1")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 10
    tls = (context, "127.0.0.1") if context is not None else None
    assoc = ae.associate("127.0.0.1", port, ae_title="TRIAGE", tls_args=tls)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and int(status.Status) == 0


def _store(port: int, context: ssl.SSLContext, files: list[Path]) -> None:
    ae = AE(ae_title="CR1")
    for path in files:
        ds = pydicom.dcmread(path)
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="TRIAGE", tls_args=(context, "127.0.0.1"))
    assert assoc.is_established
    for path in files:
        assert int(assoc.send_c_store(pydicom.dcmread(path)).Status) == 0
    assoc.release()


class TlsPacs:
    """A storage SCP with DICOM TLS (pynetdicom) that requires a client certificate of ``ca``."""

    def __init__(self, port: int, ca: Path, cert: Path, key: Path) -> None:
        self.received: list[str] = []
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        context.load_verify_locations(cafile=str(ca))
        context.verify_mode = ssl.CERT_REQUIRED
        self.ae = AE(ae_title="PACS")
        self.ae.supported_contexts = AllStoragePresentationContexts
        self.lock = threading.Lock()
        self.server = self.ae.start_server(
            ("127.0.0.1", port),
            block=False,
            ssl_context=context,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
        )

    def _on_store(self, event: Any) -> int:
        with self.lock:
            self.received.append(str(event.dataset.SOPInstanceUID))
        return 0

    def stop(self) -> None:
        if self.server in self.ae._servers:  # pynetdicom's shutdown is not idempotent
            self.server.shutdown()


@dataclass
class Node:
    out: Path
    port: int
    proc: ServiceProcess


def _listen(root: Path, pki: Pki, *extra: object) -> Node:
    out, port = root / "out", free_port()
    env = {"TRIAGE_TLS_CERT": str(pki.cert), "TRIAGE_TLS_KEY": str(pki.key), "TRIAGE_TLS_CA": str(pki.ca)}
    proc = ServiceProcess(
        "listen",
        [
            "--out", out, "--model", root.parent / "bundle", "--port", port, "--ae-title", "TRIAGE",
            "--allow-ae", "CR1", "--quiet-seconds", "0.3", *FAST_RETRY, *QUICK, *extra,
        ],
        root / "listen.log",
        env=env,  # as the settings file (a systemd EnvironmentFile) sets them
    ).start()  # fmt: skip
    proc.wait_until(lambda: "listen_started" in proc.log.read_text(), 60, "the listener")
    return Node(out, port, proc)


@pytest.fixture
def node_root(tmp_path: Path, bundle: Path) -> Iterator[Path]:
    (tmp_path / "bundle").symlink_to(bundle)
    (tmp_path / "node").mkdir()
    yield tmp_path / "node"


def test_the_listener_accepts_the_right_ca_and_refuses_without_it(node_root: Path, pki: Pki) -> None:
    node = _listen(node_root, pki)
    try:
        assert "(DICOM TLS)" in node.proc.log.read_text()
        assert _associate(node.port, _client(pki.ca, pki.cert, pki.key)), "right CA, certificate of it"
        assert not _associate(node.port, _client(None, pki.cert, pki.key)), "our CA not trusted"
        assert not _associate(node.port, _client(pki.ca, pki.other_cert, pki.other_key)), "other CA's cert"
        assert not _associate(node.port, _client(pki.ca)), "no client certificate"
        assert not _associate(node.port, None), "no TLS"
        node.proc.check_alive()
        assert node.proc.terminate() == 0
    finally:
        node.proc.stop()


def test_the_forwarder_delivers_over_tls_only_to_a_pacs_of_the_right_ca(
    node_root: Path, pki: Pki, studies: Studies
) -> None:
    pacs_port = free_port()
    rogue = TlsPacs(pacs_port, pki.ca, pki.other_cert, pki.other_key)  # a certificate of another CA
    node = _listen(node_root, pki, "--forward", f"127.0.0.1:{pacs_port}:PACS")
    db = node.out / "jobs.sqlite3"
    pacs: TlsPacs | None = None
    try:
        files = studies.files[45:47]
        _store(node.port, _client(pki.ca, pki.cert, pki.key), files)
        node.proc.wait_until(lambda: job_states(db).get("done", 0) == 2, 120, "processing")

        def retried() -> bool:
            rows = query_if_ready(db, "SELECT count(*) FROM outbox WHERE state='pending' AND attempts >= 2")
            return bool(rows) and rows[0][0] > 0

        node.proc.wait_until(retried, 60, "retries while the PACS's certificate is not trusted")
        assert rogue.received == []
        rogue.stop()
        pacs = TlsPacs(pacs_port, pki.ca, pki.cert, pki.key)

        def drained() -> bool:
            return {r[0] for r in query_if_ready(db, "SELECT state FROM outbox")} == {"delivered"}

        wait_until(drained, 120, "delivery over TLS", alive=node.proc.check_alive)
        wanted = {r[0] for r in query_if_ready(db, "SELECT sop_uid FROM outbox")}
        assert sorted(pacs.received) == sorted(wanted) and len(wanted) >= 4  # SC and SR of each at least
        assert node.proc.terminate() == 0
    finally:
        node.proc.stop()
        rogue.stop()
        if pacs is not None:
            pacs.stop()
