"""Settings, error classes, back-off, logs and the command line's one-line errors."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from serving.config import ConfigError, Destination, ListenConfig, ServiceConfig, WatchConfig, check_ae_title
from serving.logs import setup_logging
from serving.policy import FATAL, GONE, PERMANENT, TRANSIENT, backoff, classify
from serving.service import FolderLock
from tests.serving.helpers import PHI, ROOT
from triage.errors import ErrorCode


def test_every_error_code_has_exactly_one_class() -> None:
    groups = [PERMANENT, TRANSIENT, FATAL, GONE]
    assert set().union(*groups) == set(ErrorCode)
    assert sum(len(g) for g in groups) == len(ErrorCode)
    assert classify("write_failed") == "transient" and classify("not_dicom") == "permanent"
    assert classify("something new") == "transient"


def test_backoff_doubles_up_to_the_cap_with_bounded_jitter() -> None:
    delays = [backoff(n, 5.0, 60.0) for n in range(1, 8)]
    for n, delay in enumerate(delays, start=1):
        base = min(60.0, 5.0 * 2 ** (n - 1))
        assert base <= delay <= base * 1.1


def test_destination_and_ae_titles() -> None:
    assert Destination.parse("pacs.local:104:PACS") == Destination("pacs.local", 104, "PACS")
    assert Destination.parse("[::1]:11112:ARCHIVE") == Destination("::1", 11112, "ARCHIVE")
    for bad, words in (
        ("pacs:104", "HOST:PORT:AET"),
        ("pacs:0:PACS", "1 to 65535"),
        ("pacs:104:" + "X" * 17, "16 printable"),
    ):
        with pytest.raises(ConfigError, match=words):
            Destination.parse(bad)
    with pytest.raises(ConfigError, match="backslash"):
        check_ae_title("A\\B")


def test_settings_name_the_bad_value_and_the_valid_ones(tmp_path: Path) -> None:
    base = {"out": tmp_path / "out", "bundle": tmp_path / "b"}
    with pytest.raises(ConfigError, match="keep, move, delete"):
        ServiceConfig(**base, inputs="copy")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="png, seg, sc, sr"):
        ServiceConfig(**base, formats=frozenset({"jpeg"}))
    with pytest.raises(ConfigError, match="--format writes none"):
        ServiceConfig(**base, formats=frozenset({"png"}), forward=Destination("h", 1, "A"))
    service = ServiceConfig(**base)
    with pytest.raises(ConfigError, match="--allow-ae"):
        ListenConfig(host="0.0.0.0").check(service)
    ListenConfig(host="0.0.0.0", allow_ae=("CR1",)).check(service)
    ListenConfig(host="::1").check(service)
    (tmp_path / "in" / "out").mkdir(parents=True)
    with pytest.raises(ConfigError, match="must not be inside"):
        WatchConfig(tmp_path / "in").check(ServiceConfig(out=tmp_path / "in" / "out", bundle=tmp_path))


def test_one_service_per_output_folder(tmp_path: Path) -> None:
    with FolderLock(tmp_path), pytest.raises(ConfigError, match=f"pid {os.getpid()}"):
        FolderLock(tmp_path).__enter__()
    with FolderLock(tmp_path):  # released
        pass


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "triage.cli.main", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        check=False,
    )


def test_cli_usage_errors_are_one_line_with_exit_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from serving.cli import main

    (tmp_path / "in").mkdir()
    cases = [
        (
            [
                "watch",
                str(tmp_path / "in"),
                "--out",
                str(tmp_path / "o"),
                "--model",
                str(tmp_path),
                "--inputs",
                "copy",
            ],
            "'keep', 'move', 'delete'",
        ),
        (
            ["watch", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--model", str(tmp_path)],
            "not a folder",
        ),
        (
            [
                "watch",
                str(tmp_path / "in"),
                "--out",
                str(tmp_path / "o"),
                "--model",
                str(tmp_path / "none"),
                "--http-port",
                "0",
            ],
            "bundle_missing",
        ),
        (
            ["listen", "--out", str(tmp_path / "o"), "--model", str(tmp_path), "--host", "0.0.0.0"],
            "--allow-ae",
        ),
        (
            ["listen", "--out", str(tmp_path / "o"), "--model", str(tmp_path), "--forward", "pacs"],
            "HOST:PORT:AET",
        ),
        (["jobs", str(tmp_path / "empty")], "no job store"),
    ]
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, warnings.showwarning)
    try:
        for args, words in cases:
            status = main(args[0], args[1:])
            lines = capsys.readouterr().err.strip().splitlines()
            lines = [line for line in lines if not line.startswith("{")]  # the JSON log of a started service
            assert status == 2 and len(lines) == 1 and words in lines[0], (args, lines)
            assert lines[0].startswith(f"triage {args[0]}: error:")
    finally:
        root.handlers[:], warnings.showwarning = saved[0], saved[2]
        root.setLevel(saved[1])
    proc = _cli("listen", "--out", str(tmp_path / "o"), "--model", str(tmp_path), "--port", "0")
    assert proc.returncode == 2 and proc.stderr.startswith("triage listen: error: Invalid value for '--port'")
    assert "--quiet-seconds" in _cli("watch", "--help").stdout


def test_missing_serving_extra_is_a_one_line_error(tmp_path: Path) -> None:
    blocker = tmp_path / "sitecustomize.py"  # pynetdicom looks uninstalled (no distribution)
    blocker.write_text(
        "import importlib.metadata as m\nfound = m.distribution\n"
        "def distribution(name):\n"
        "    if name.lower() == 'pynetdicom':\n        raise m.PackageNotFoundError(name)\n"
        "    return found(name)\n"
        "m.distribution = distribution\n"
    )
    proc = _cli("listen", "--help", env={"PYTHONPATH": f"{tmp_path}:{ROOT}"})
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "triage listen: error: needs the serving extra: pip install 'triage[serving]' (missing: pynetdicom)"
    )


def test_logs_are_json_and_never_quote_dicom_values() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        with warnings.catch_warnings():  # pytest records warnings; let this one reach logging
            warnings.simplefilter("always")
            logging.captureWarnings(False)  # an earlier test may have left it on: start from the default
            setup_logging("info", stream=stream)
            logging.getLogger("serving.test").info("study done", extra={"event": "study_done", "job": 3})
            logging.getLogger("pydicom.valuerep").warning("Invalid value for VR PN: %r", PHI["PatientName"])
            warnings.warn(f"Invalid value {PHI['PatientID']}", UserWarning, stacklevel=1)
            logging.captureWarnings(False)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert (
        entries[0]["msg"] == "study done" and entries[0]["event"] == "study_done" and entries[0]["job"] == 3
    )
    assert entries[0]["ts"].endswith("Z") and entries[0]["level"] == "INFO"
    text = stream.getvalue()
    assert PHI["PatientName"] not in text and PHI["PatientID"] not in text
    assert len(entries) == 3, entries
    assert "withheld" in entries[1]["msg"] and "UserWarning" in entries[2]["msg"]
