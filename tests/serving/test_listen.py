"""`triage listen` with real DICOM peers: DCMTK storescu / echoscu as the modality, Orthanc as the PACS.

Studies go in uncompressed, RLE, JPEG 2000 lossless, JPEG lossless (dcmcjpeg) and JPEG-LS (dcmcjpls);
the listener must accept each without transcoding, triage it and forward SEG / SC / SR to Orthanc,
each object stored there exactly once — also when Orthanc was down while the results were produced.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom import uid as uids

from tests.serving.conftest import Studies
from tests.serving.helpers import (
    Orthanc,
    ServiceProcess,
    dciodvfy_errors,
    extra_image,
    free_port,
    http_get,
    job_states,
    metric,
    query,
    require_tool,
    storescu,
)
from triage.synth.config import PhantomConfig
from triage.synth.dataset import SynthRequest, synthesize

pytestmark = pytest.mark.slow


@dataclass
class Node:
    root: Path
    out: Path
    port: int
    http: int
    pacs: Orthanc
    proc: ServiceProcess

    @property
    def db(self) -> Path:
        return self.out / "jobs.sqlite3"

    def outbox(self) -> dict[str, int]:
        return {s: n for s, n in query(self.db, "SELECT state, count(*) FROM outbox GROUP BY state")}

    def objects(self, study_uids: set[str]) -> list[Path]:
        return sorted(p for s in study_uids for p in (self.out / "studies" / s).glob("*.dcm"))


def _start_node(root: Path, pacs: Orthanc, bundle: Path, *extra: object) -> Node:
    out, port, http = root / "out", free_port(), free_port()
    proc = ServiceProcess(
        "listen",
        [
            "--out",
            out,
            "--model",
            bundle,
            "--port",
            port,
            "--ae-title",
            "TRIAGE",
            "--allow-ae",
            "MODALITY,CR1",
            "--forward",
            pacs.destination,
            "--quiet-seconds",
            "0.5",
            "--http-port",
            http,
            "--retry-base",
            "0.2",
            "--retry-max",
            "1",
            "--min-free-mb",
            "1",
            "--threads",
            "1",
            *extra,
        ],
        root / "listen.log",
    ).start()
    proc.wait_until(lambda: "listen_started" in proc.log.read_text(), 60, "the listener")
    return Node(root, out, port, http, pacs, proc)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, bundle: Path) -> Iterator[Node]:
    root = tmp_path_factory.mktemp("listen")
    pacs = Orthanc(root / "pacs").start()
    node = _start_node(root / "node", pacs, bundle, "--inputs", "keep")
    yield node
    node.proc.stop()
    pacs.stop()


@pytest.fixture(scope="module")
def compressed(tmp_path_factory: pytest.TempPathFactory, studies: Studies) -> dict[str, list[Path]]:
    """Studies in several transfer syntaxes, each with storescu's flag proposing that syntax."""
    root = tmp_path_factory.mktemp("syntaxes")
    sets: dict[str, list[Path]] = {"": studies.files[40:43]}
    for name, seed in (("rle", 21), ("j2k", 22)):
        config = PhantomConfig.from_dict({"compression": name})
        synthesize(SynthRequest(root / name, studies=3, size=128, seed=seed, config=config), workers=1)
        sets[name] = sorted((root / name / "dicom-images-train").rglob("*.dcm"))
    for name, tool, package in (("jpeg", "dcmcjpeg", "dcmtk"), ("jls", "dcmcjpls", "dcmtk")):
        binary = require_tool(tool, package)
        sets[name] = []
        for i, source in enumerate(studies.files[43:45]):
            fresh = extra_image(source, root / name / f"u{i}.dcm", 50 + i + 10 * len(name), new_study=True)
            target = root / name / f"{i}.dcm"
            subprocess.run([binary, str(fresh), str(target)], check=True, capture_output=True)
            sets[name].append(target)
    return sets


FLAGS = {"": [], "rle": ["-xr"], "j2k": ["-xv"], "jpeg": ["-xs"], "jls": ["-xt"]}
SYNTAXES = {
    "rle": uids.RLELossless,
    "j2k": uids.JPEG2000Lossless,
    "jpeg": uids.JPEGLosslessSV1,
    "jls": uids.JPEGLSLossless,
}


def _study(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def test_compressed_and_uncompressed_studies_are_triaged_and_forwarded_once(
    node: Node, compressed: dict[str, list[Path]]
) -> None:
    sent = [p for files in compressed.values() for p in files]
    studies = {_study(p) for p in sent}
    for name, files in compressed.items():
        proc = storescu(node.port, files, extra=FLAGS[name])
        assert proc.returncode == 0, proc.stderr
    node.proc.wait_until(lambda: job_states(node.db).get("done", 0) >= len(studies), 120, "the studies")
    spooled = {p: pydicom.dcmread(p, stop_before_pixels=True) for p in (node.out / "spool").rglob("*.dcm")}
    syntaxes = {
        str(ds.file_meta.TransferSyntaxUID) for ds in spooled.values() if ds.StudyInstanceUID in studies
    }
    assert {str(ts) for ts in SYNTAXES.values()} <= syntaxes, "received as sent, without transcoding"
    objects = node.objects(studies)
    wanted = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in objects}
    node.proc.wait_until(lambda: wanted <= set(node.pacs.store_events()), 120, "forwarding to the PACS")
    stored = Counter(node.pacs.store_events())
    assert all(stored[uid] == 1 for uid in wanted), "each object stored in the PACS exactly once"
    assert wanted <= set(node.pacs.sop_uids())
    kinds = Counter(p.name.rsplit("_", 1)[1] for p in objects)
    assert kinds["sc.dcm"] == kinds["sr.dcm"] == len(sent) and kinds["seg.dcm"] >= 1
    assert dciodvfy_errors(objects) == []
    _, body = http_get(f"http://127.0.0.1:{node.http}/metrics")
    assert metric(body, "triage_forwarded_total", 'outcome="delivered"') >= len(wanted)
    assert metric(body, "triage_received_files_total", 'source="listen"') >= len(sent)


def test_echo_and_only_allowed_calling_ae_titles_on_our_called_ae_title(node: Node, studies: Studies) -> None:
    echo = subprocess.run(
        [require_tool("echoscu", "dcmtk"), "-aet", "CR1", "-aec", "TRIAGE", "127.0.0.1", str(node.port)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert echo.returncode == 0, echo.stderr
    before = len(list((node.out / "spool").rglob("*.dcm")))
    stranger = storescu(node.port, studies.files[50:51], calling="STRANGER")
    wrong_called = storescu(node.port, studies.files[51:52], called="SOMEONE")
    for proc in (stranger, wrong_called):
        assert proc.returncode != 0 and "Association Rejected" in proc.stderr + proc.stdout
    assert len(list((node.out / "spool").rglob("*.dcm"))) == before
    events = [e for e in node.proc.log_entries() if e.get("event") == "association_rejected"]
    assert {e["calling_ae"] for e in events} >= {"STRANGER"}


def test_the_listener_binds_loopback_only(node: Node) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent; this picks the outward interface
            address = probe.getsockname()[0]
        except OSError:
            pytest.skip("no non-loopback interface on this machine")
    if address.startswith("127."):
        pytest.skip("no non-loopback interface on this machine")
    with socket.socket() as s, pytest.raises(OSError):
        s.settimeout(2)
        s.connect((address, node.port))


def test_low_disk_space_answers_out_of_resources(
    tmp_path: Path, node: Node, studies: Studies, bundle: Path
) -> None:
    full = _start_node(tmp_path, node.pacs, bundle, "--min-free-mb", "100000000")
    try:
        proc = storescu(full.port, studies.files[52:53], extra=["-v"])
        assert proc.returncode != 0 and "Refused: OutOfResources" in proc.stdout + proc.stderr, proc.stderr
        assert not (full.out / "spool").exists() or not list((full.out / "spool").rglob("*.dcm"))
        _, body = http_get(f"http://127.0.0.1:{full.http}/metrics")
        assert metric(body, "triage_rejected_stores_total", 'reason="disk_low"') == 1
        assert json.loads(http_get(f"http://127.0.0.1:{full.http}/healthz")[1])["status"] == "degraded"
    finally:
        full.proc.stop()


def test_pacs_down_while_results_are_produced_then_every_result_delivered_once(
    tmp_path: Path, studies: Studies, bundle: Path
) -> None:
    pacs = Orthanc(tmp_path / "pacs2").start()
    local = _start_node(tmp_path / "node", pacs, bundle)
    try:
        first = studies.files[53:54]
        assert storescu(local.port, first).returncode == 0
        local.proc.wait_until(
            lambda: local.outbox().get("delivered", 0) >= 2, 60, "delivery while PACS is up"
        )
        pacs.stop()
        rest = studies.files[54:58]
        assert storescu(local.port, rest).returncode == 0
        local.proc.wait_until(lambda: job_states(local.db).get("done", 0) == 5, 60, "processing")

        def retried() -> bool:
            rows = query(local.db, "SELECT count(*) FROM outbox WHERE state='pending' AND attempts >= 2")
            return rows[0][0] > 0

        local.proc.wait_until(retried, 60, "retries while the PACS is down")
        health = json.loads(http_get(f"http://127.0.0.1:{local.http}/healthz")[1])
        assert health["status"] == "degraded" and "unreachable" in " ".join(health["degraded"])
        time.sleep(1)
        pacs.start()
        local.proc.wait_until(lambda: set(local.outbox()) == {"delivered"}, 120, "the outbox to drain")
        studies_sent = {_study(p) for p in first + rest}
        wanted = {
            str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
            for p in local.objects(studies_sent)
        }
        stored = Counter(pacs.store_events())
        assert set(stored) == wanted and set(stored.values()) == {1}, "every result delivered, once"
        assert set(pacs.sop_uids()) == wanted
        assert local.proc.terminate() == 0
    finally:
        local.proc.stop()
        pacs.stop()
