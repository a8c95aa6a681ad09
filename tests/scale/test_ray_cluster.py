"""`triage predict --engine ray` on a real two-node Ray cluster on this machine.

The module starts a head and a second node (`ray.cluster_utils.Cluster`: separate GCS / raylet / worker
processes, one CPU each, on a loopback address) and stops them at the end; the CLI joins it with
``--address`` and ``--actors 2``, so one actor runs on each node. Against a local `triage predict` of the
same manifest (which mixes in a duplicate, a blank line, a folder with a non-DICOM file, a missing file and a
path relative to the driver's working directory):
the same records (probabilities within 1e-5, same decisions, same error records) and byte-identical output
files; a worker killed mid-run, a node lost mid-run and a driver killed mid-run and restarted with
``--resume`` each end with every input recorded exactly once and every output complete.

Needs the scale extra (skipped without Ray). The tests share one cluster: `make test` keeps them on one
xdist worker (``--dist loadgroup``).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.bundles import build_tiny_bundle
from triage.synth.dataset import SynthRequest, synthesize

pytest.importorskip("ray.data", reason="the scale extra (Ray) is not installed")
from ray.cluster_utils import Cluster

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray-cluster")]

# Ray replaces 127.0.0.1 by the machine's outward address; another loopback address stays loopback.
NODE = {"num_cpus": 1, "node_ip_address": "127.0.0.2", "object_store_memory": 100 * 2**20}
FORMATS = "png,seg,sc,sr"
RUN_LIMIT_S = 300


@dataclass
class Setup:
    bundle: Path
    manifest: Path
    local: Path  # `triage predict` (local engine) of the manifest
    local_rc: int


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "triage.cli.main", *args]


def _lines(out: Path) -> list[dict[str, Any]]:
    path = out / "results.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _records(out: Path) -> dict[str, dict[str, Any]]:
    lines = _lines(out)
    by_input = {str(r["input"]): r for r in lines}
    assert len(by_input) == len(lines), "an input is recorded twice"
    return by_input


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    root = tmp_path_factory.mktemp("ray")
    synthesize(SynthRequest(root / "synth", studies=12, size=160, seed=3), workers=1)
    files = sorted((root / "synth" / "dicom-images-train").rglob("*.dcm"))
    (root / "folder").mkdir()
    (root / "folder" / "notes.txt").write_text("not an image\n")
    manifest = root / "manifest.txt"
    entries = [*map(str, files[:6]), "", str(files[0]), str(root / "folder"), str(root / "missing.dcm"),
               *map(str, files[6:-1]), os.path.relpath(files[-1])]  # relative to the driver's directory
    manifest.write_text("\n".join(entries) + "\n")
    bundle = build_tiny_bundle(root / "bundle", gate=0.06)  # some images gated to the segmenter, some not
    local = root / "local"
    proc = subprocess.run(_cli("predict", "--files-from", str(manifest), "-m", str(bundle), "-o", str(local),
                               "--format", FORMATS), capture_output=True, text=True, check=False)
    assert proc.returncode == 1, proc.stderr  # the non-DICOM file and the missing file fail
    return Setup(bundle, manifest, local, proc.returncode)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    cluster = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False},
                      shutdown_at_exit=True)
    try:
        cluster.add_node(**NODE)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()


def _raylet_pid(node: Any) -> int:
    return int(node.all_processes["raylet"][0].process.pid)


def _map_workers() -> dict[int, int]:
    """The processes of Ray Data's actor pool on this machine: pid → parent pid (its node's raylet)."""
    found: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        if cmdline.startswith(b"ray::MapWorker"):
            found[int(name)] = int(stat[stat.rindex(")") + 2:].split()[1])
    return found


def _run_ray(
    setup: Setup, cluster: Cluster, out: Path, *extra: str,
    when: Callable[[int], bool] | None = None, then: Callable[[subprocess.Popen[str]], None] | None = None,
) -> tuple[subprocess.Popen[str], set[int]]:
    """Run `triage predict --engine ray` on the cluster to the end. ``then`` is called once, as soon as
    ``when(number of records written)`` holds. Returns the finished process and the parent pids of the
    actor-pool processes seen while it ran."""
    cmd = _cli("predict", "--files-from", str(setup.manifest), "-m", str(setup.bundle), "-o", str(out),
               "--format", FORMATS, "--engine", "ray", "--address", cluster.address, "--actors", "2", *extra)
    log = (out.parent / f"{out.name}.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
    parents: set[int] = set()
    deadline = time.monotonic() + RUN_LIMIT_S
    try:
        while proc.poll() is None:
            assert time.monotonic() < deadline, f"--engine ray did not finish in {RUN_LIMIT_S} s"
            parents |= set(_map_workers().values())
            if then is not None and when is not None and when(len(_lines(out))):
                then(proc)
                then = None
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        log.close()
    return proc, parents


def _mid_run(setup: Setup) -> Callable[[int], bool]:
    """True once an actor has returned records: the driver writes the records of arguments that name no
    file before any actor starts."""
    upfront = sum(r["error_code"] == "not_found" for r in _records(setup.local).values())
    return lambda written: written > upfront


def _log(out: Path) -> str:
    return (out.parent / f"{out.name}.log").read_text()


def _assert_same_as_local(setup: Setup, out: Path) -> None:
    """The records of ``out`` equal the local run's (each input once; probabilities within 1e-5), and every
    output file is byte-identical; no temporary file is left behind."""
    local, got = _records(setup.local), _records(out)
    assert got.keys() == local.keys()
    for key, want in local.items():
        have = got[key]
        for field in ("probability", "priority"):
            if want[field] is None:
                assert have[field] is None, (key, field)
            else:
                assert math.isclose(have[field], want[field], abs_tol=1e-5), (key, field)
        same = ("status", "error_code", "message", "study_uid", "sop_uid", "positive", "gated",
                "mask_area_px", "mask_area_mm2", "bundle", "outputs")
        assert {f: have[f] for f in same} == {f: want[f] for f in same}, key
        for rel in want["outputs"].values():
            assert (out / rel).read_bytes() == (setup.local / rel).read_bytes(), rel
    assert not list(out.rglob("*.tmp"))
    assert (out / "worklist.csv").read_text() == (setup.local / "worklist.csv").read_text()


def test_two_nodes_give_the_records_and_files_of_local_predict(
    setup: Setup, cluster: Cluster, tmp_path: Path
) -> None:
    proc, parents = _run_ray(setup, cluster, tmp_path / "out")
    assert proc.returncode == setup.local_rc, _log(tmp_path / "out")
    assert {_raylet_pid(cluster.head_node), *(_raylet_pid(n) for n in cluster.worker_nodes)} <= parents, (
        "an actor on each node"
    )
    _assert_same_as_local(setup, tmp_path / "out")
    assert "Traceback" not in _log(tmp_path / "out")


def _fault_mid_run(
    setup: Setup, cluster: Cluster, tmp_path: Path, fault: Callable[[subprocess.Popen[str]], None],
    landed: Callable[[Path, list[int]], bool], tries: int = 3,
) -> tuple[Path, subprocess.Popen[str]]:
    """Run on the cluster and inject ``fault`` once an actor has returned records. ``landed(out, seen)``
    (``seen``: the records written when the fault was injected) says whether it struck mid-run; a run that
    ended first (records arrive in a few waves and this process polls every 0.1 s: under load it can see
    them all at once) is tried again in a fresh folder, at most ``tries`` times."""
    for attempt in range(tries):
        out = tmp_path / f"out{attempt}"
        seen: list[int] = []

        def inject(proc: subprocess.Popen[str], out: Path = out, seen: list[int] = seen) -> None:
            seen.append(len(_lines(out)))
            fault(proc)

        proc, _ = _run_ray(setup, cluster, out, when=_mid_run(setup), then=inject)
        if seen and landed(out, seen):
            return out, proc
        if not cluster.worker_nodes:  # a lost node is added back for the next try
            cluster.add_node(**NODE)
            cluster.wait_for_nodes()
    pytest.fail(f"the fault never struck mid-run in {tries} tries")


def test_a_worker_killed_mid_run_leaves_every_input_once(
    setup: Setup, cluster: Cluster, tmp_path: Path
) -> None:
    total = len(_records(setup.local))
    out, proc = _fault_mid_run(
        setup, cluster, tmp_path, lambda _: os.kill(next(iter(_map_workers())), signal.SIGKILL),
        landed=lambda _, seen: seen[0] < total,
    )
    assert proc.returncode == setup.local_rc, _log(out)
    _assert_same_as_local(setup, out)
    assert len(_lines(out)) == total


def test_a_driver_killed_mid_run_then_resume_records_every_input_once(
    setup: Setup, cluster: Cluster, tmp_path: Path
) -> None:
    total = len(_records(setup.local))
    out, proc = _fault_mid_run(
        setup, cluster, tmp_path, lambda driver: driver.send_signal(signal.SIGKILL),
        landed=lambda out, _: _mid_run(setup)(len(_lines(out))) and len(_lines(out)) < total,
    )
    assert proc.returncode == -signal.SIGKILL
    proc, _ = _run_ray(setup, cluster, out, "--resume")
    assert proc.returncode == setup.local_rc, _log(out)
    _assert_same_as_local(setup, out)
    assert len(_lines(out)) == total


def test_a_node_lost_mid_run_leaves_every_input_once(setup: Setup, cluster: Cluster, tmp_path: Path) -> None:
    total = len(_records(setup.local))

    def lose_a_node(_: subprocess.Popen[str]) -> None:
        cluster.remove_node(next(iter(cluster.worker_nodes)), allow_graceful=False)

    out, proc = _fault_mid_run(  # the last cluster test
        setup, cluster, tmp_path, lose_a_node,
        landed=lambda _, seen: seen[0] < total,
    )
    assert proc.returncode == setup.local_rc, _log(out)
    _assert_same_as_local(setup, out)


@pytest.mark.parametrize(("address", "needle"), [
    ("127.0.0.1:9", "no Ray cluster reachable"),  # the discard port: nothing listens
    ("nowhere", "is not valid"),
])
def test_an_unusable_address_is_a_one_line_error(
    setup: Setup, tmp_path: Path, address: str, needle: str
) -> None:
    proc = subprocess.run(_cli("predict", "--files-from", str(setup.manifest), "-m", str(setup.bundle),
                               "-o", str(tmp_path / "o"), "--engine", "ray", "--address", address),
                          capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and "HOST:PORT" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "o" / "results.jsonl").exists()
