"""Helpers for the service tests: the service as a real subprocess, Orthanc as the PACS, DCMTK tools.

Everything listens on 127.0.0.1 with free ports chosen here; every process is started and stopped by
the test that needs it. Tools that are missing skip the test with a message outside CI and fail it in
CI (env CI set), like tests/triage/test_outputs_dicom.py.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pydicom
import pytest

ROOT = Path(__file__).resolve().parents[2]
PHI = {"PatientName": "QUIXOTEPHI^ZORRINA", "PatientID": "PHIID8831477", "PatientBirthDate": "19230405"}


# Service options every test service uses: metrics on a free port, no free-space floor, one thread;
# and retries seconds apart instead of minutes.
QUICK = ["--http-port", "0", "--min-free-mb", "1", "--threads", "1"]
FAST_RETRY = ["--retry-base", "0.2", "--retry-max", "1"]


class LoopbackHTTP(ThreadingHTTPServer):
    """An HTTP server on a free loopback port, serving from a daemon thread from the start."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def base(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_tool(name: str, package: str) -> str:
    """The Debian package's program: the virtual environment is skipped (pynetdicom installs its own
    storescu / echoscu there, with other options), /usr/sbin added (Orthanc)."""
    system = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and not d.startswith(sys.prefix)]
    path = shutil.which(name, path=os.pathsep.join([*system, "/usr/sbin", "/sbin"]))
    if path is None:
        message = f"{name} not found; install the Debian package {package} (make dcmtk does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    interval: float = 0.1,
    alive: Callable[[], None] | None = None,
) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if alive is not None:
            alive()
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class ServiceProcess:
    """`python -m triage.cli.main COMMAND ARGS` with its output in ``log``."""

    def __init__(
        self, command: str, args: Sequence[object], log: Path, env: dict[str, str] | None = None
    ) -> None:
        self.command = command
        self.args = [str(a) for a in args]
        self.log = log
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **self.env}
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "triage.cli.main", self.command, *self.args],
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=env,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"the service exited with {self.proc.returncode}:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        return (
            "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""
        )

    def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        wait_until(predicate, timeout, what, alive=self.check_alive)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def terminate(self, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"the service did not exit within {timeout} s:\n{self.tail()}") from None

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM in /proc status")

    def stop(self) -> None:
        if self.running():
            self.terminate()

    def log_entries(self) -> list[dict[str, Any]]:
        """The JSON log lines (non-JSON lines, e.g. a traceback, raise)."""
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]


def triage_jobs(out: Path) -> subprocess.CompletedProcess[str]:
    """`triage jobs OUT` as a user runs it (wide terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "triage.cli.main", "jobs", str(out)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"},
    )


def query(db: Path, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(db, timeout=30)
    try:
        return list(con.execute(sql, args).fetchall())
    finally:
        con.close()


def query_if_ready(db: Path, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """``query``, or no rows while the service has not created the store (or the table) yet."""
    if not db.exists():
        return []
    try:
        return query(db, sql, args)
    except sqlite3.OperationalError:
        return []


def job_states(db: Path) -> dict[str, int]:
    if not db.exists():
        return {}
    try:
        rows = query(db, "SELECT state, count(*) FROM jobs WHERE study_uid IS NOT NULL GROUP BY state")
    except sqlite3.OperationalError:  # not created yet
        return {}
    return {str(s): int(n) for s, n in rows}


def done_studies(db: Path) -> int:
    return job_states(db).get("done", 0)


def results(out: Path) -> list[dict[str, Any]]:
    path = out / "results.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def http_get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def metric(text: str, name: str, labels: str = "") -> float:
    """The value of ``name{labels}`` in a Prometheus exposition (0 if absent)."""
    key = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(key + " "):
            return float(line.split()[-1])
    return 0.0


def set_identity(path: Path, out: Path | None = None, **values: str) -> Path:
    ds = pydicom.dcmread(path)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    target = out or path
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target, enforce_file_format=True)
    return target


def _new_uid(old: str, n: int) -> str:
    return str(pydicom.uid.generate_uid(entropy_srcs=[old, str(n)]))


def extra_image(source: Path, target: Path, n: int, new_study: bool = False, **values: Any) -> Path:
    """A copy of ``source`` with new series and SOP UIDs (a second image of the same study), or with
    ``new_study`` a new StudyInstanceUID too; ``values`` set other attributes."""
    ds = pydicom.dcmread(source)
    if new_study:
        ds.StudyInstanceUID = _new_uid(ds.StudyInstanceUID, n)
    ds.SeriesInstanceUID = _new_uid(ds.SeriesInstanceUID, n)
    ds.SOPInstanceUID = _new_uid(ds.SOPInstanceUID, n)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target, enforce_file_format=True)
    return target


def dciodvfy_errors(paths: Iterable[Path]) -> list[str]:
    tool = require_tool("dciodvfy", "dicom3tools")
    failures = []
    for path in paths:
        proc = subprocess.run([tool, str(path)], capture_output=True, text=True, check=False)
        errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]
        if errors:
            failures.append(f"{path.name}: {errors[:3]}")
    return failures


def storescu(
    port: int,
    files: Sequence[Path],
    calling: str = "MODALITY",
    called: str = "TRIAGE",
    extra: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    tool = require_tool("storescu", "dcmtk")
    return subprocess.run(
        [tool, "-aet", calling, "-aec", called, *extra, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


_LUA = """
function OnStoredInstance(instanceId, tags, metadata, origin)
   local f = io.open("{log}", "a")
   f:write(tags["SOPInstanceUID"] .. "\\n")
   f:close()
end
"""


def require_dicomweb_extra() -> None:
    """The dicomweb extra (dicomweb-client, hl7apy, fhir.resources) and the `triage poll` entry point, as
    `make test` installs them (pip install -e '.[dicomweb]'); at module level: skips the module (fails it
    in CI) without them."""
    from triage.cli.plugins import command_entry_points

    missing = []
    for module in ("dicomweb_client", "hl7apy", "fhir.resources"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:
            found = False
        if not found:
            missing.append(module)
    if "poll" not in command_entry_points():
        missing.append("the entry point of `triage poll`")
    if missing:
        message = f"missing {', '.join(missing)}; pip install -e '.[dicomweb]' (make test does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message, allow_module_level=True)


DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def dicomweb_plugin() -> str:
    """Orthanc's DICOMweb plugin (Debian package orthanc-dicomweb); skips (fails in CI) without it."""
    if not DICOMWEB_PLUGIN.exists():
        message = f"{DICOMWEB_PLUGIN} not found; install Debian package orthanc-dicomweb (make dcmtk does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return str(DICOMWEB_PLUGIN)


class Orthanc:
    """The PACS: Orthanc with its storage in ``root``, DICOM and HTTP on free loopback ports.

    Every C-STORE it accepts appends the SOPInstanceUID to ``stored.log`` (a Lua hook; with
    OverwriteInstances a repeated store of the same instance is logged again), so tests can check that
    each object was delivered exactly once.
    """

    def __init__(
        self, root: Path, ae_title: str = "PACS", dicomweb: bool = False, users: dict[str, str] | None = None
    ) -> None:
        self.binary = require_tool("Orthanc", "orthanc")
        plugins = [dicomweb_plugin()] if dicomweb else []
        self.users = dict(users or {})
        self.root = root
        self.ae_title = ae_title
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.stored_log = root / "stored.log"
        self.proc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)
        (root / "stored.lua").write_text(_LUA.format(log=self.stored_log))
        config = {
            "Name": "triage-test-pacs",
            "StorageDirectory": str(root / "db"),
            "IndexDirectory": str(root / "db"),
            "DicomAet": ae_title,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(self.users),
            "RegisteredUsers": self.users,
            "Plugins": plugins,
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "Host": "127.0.0.1"},
            "DicomAlwaysAllowStore": True,
            "DicomCheckCalledAet": True,
            "OverwriteInstances": True,
            "LuaScripts": [str(root / "stored.lua")],
            "SaveJobs": False,
            "WebDavEnabled": False,
            "StableAge": 2,
            "ConcurrentJobs": 1,
        }
        (root / "orthanc.json").write_text(json.dumps(config, indent=1))

    @property
    def dicomweb_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    @property
    def destination(self) -> str:
        return f"127.0.0.1:{self.dicom_port}:{self.ae_title}"

    def start(self) -> Orthanc:
        with open(self.root / "orthanc.log", "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, str(self.root / "orthanc.json")], stdout=log, stderr=log
            )
        wait_until(self._up, 30, "Orthanc to answer on its REST port")
        return self

    def _up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"Orthanc exited: {(self.root / 'orthanc.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(self._request("/system"), timeout=1) as response:
                return int(response.status) == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def _request(self, path: str, data: bytes | None = None) -> urllib.request.Request:
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=data)
        if self.users:
            user, password = next(iter(self.users.items()))
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        return request

    def rest(self, path: str) -> Any:
        with urllib.request.urlopen(self._request(path), timeout=30) as response:
            return json.loads(response.read())

    def upload(self, files: Iterable[Path]) -> None:
        """Store ``files`` through the REST API (POST /instances), as a modality would have."""
        for path in files:
            with urllib.request.urlopen(self._request("/instances", path.read_bytes()), timeout=30) as answer:
                assert answer.status == 200, (path, answer.status)

    def sop_uids(self) -> list[str]:
        """SOPInstanceUIDs of every instance stored."""
        return [i["MainDicomTags"]["SOPInstanceUID"] for i in self.rest("/instances?expand")]

    def store_events(self) -> list[str]:
        return self.stored_log.read_text().split() if self.stored_log.exists() else []
