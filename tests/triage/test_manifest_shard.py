"""Manifests (`--files-from`), shards (`--shard K/N`) and `triage merge`, on the local engine.

A few tiny synthetic studies, a tiny bundle; the manifest mixes in what users get wrong: blank lines,
duplicates, a folder, a file that does not exist.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.bundles import build_tiny_bundle
from triage.io.manifest import ManifestError, Shard, read_manifest, select_inputs
from triage.synth.dataset import SynthRequest, synthesize


@dataclass
class Setup:
    root: Path
    bundle: Path
    files: list[Path]
    manifest: Path


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "triage.cli.main", *args], input=stdin,
                          capture_output=True, text=True, check=False)


def _records(out: Path) -> dict[str, dict[str, object]]:
    lines = (out / "results.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    by_input = {str(r["input"]): r for r in records}
    assert len(by_input) == len(records), "an input appears twice"
    return by_input


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    root = tmp_path_factory.mktemp("manifest")
    synthesize(SynthRequest(root / "synth", studies=8, size=160, seed=5), workers=1)
    files = sorted((root / "synth" / "dicom-images-train").rglob("*.dcm"))
    (root / "folder").mkdir()
    (root / "folder" / "notes.txt").write_text("not an image\n")
    manifest = root / "manifest.txt"
    lines = [str(p) for p in files[:6]] + ["", "   ", str(files[0]), str(root / "folder"),
                                            str(root / "missing.dcm"), str(files[6]) + "  "]
    manifest.write_text("\n".join(lines) + "\n")
    return Setup(root, build_tiny_bundle(root / "bundle"), files, manifest)


def test_text_manifest_skips_blank_lines_and_strips_spaces(setup: Setup) -> None:
    entries = read_manifest(str(setup.manifest))
    assert "" not in entries and all(e == e.strip() for e in entries)
    assert len(entries) == 10  # 6 + duplicate + folder + missing + 1


def test_csv_and_parquet_manifests_read_the_path_column(setup: Setup, tmp_path: Path) -> None:
    paths = [str(p) for p in setup.files[:3]]
    with (tmp_path / "m.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["accession", "path"])
        writer.writerows([[str(i), p] for i, p in enumerate(paths)])
    assert read_manifest(str(tmp_path / "m.csv")) == paths
    assert read_manifest(str(tmp_path / "m.csv"), column="accession") == ["0", "1", "2"]
    with pytest.raises(ManifestError, match=r"no column 'file'.*'accession', 'path'"):
        read_manifest(str(tmp_path / "m.csv"), column="file")
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"file": paths, "n": [1, 2, 3]}), tmp_path / "m.parquet")
    assert read_manifest(str(tmp_path / "m.parquet"), column="file") == paths
    with pytest.raises(ManifestError, match="--column"):
        read_manifest(str(tmp_path / "m.parquet"))  # two columns, none called path


def test_shard_parse_refuses_what_is_not_k_of_n() -> None:
    assert Shard.parse("2/3") == Shard(2, 3)
    for bad in ("3/2", "2/2", "-1/2", "a/b", "1", "1/0"):
        with pytest.raises(ManifestError, match="K/N"):
            Shard.parse(bad)


def test_shards_cover_every_file_exactly_once(setup: Setup) -> None:
    entries = read_manifest(str(setup.manifest))
    files, missing = select_inputs(entries)
    for n in (1, 2, 3, 7):
        parts = [select_inputs(entries, Shard(k, n)) for k in range(n)]
        chosen = [str(p) for f, _ in parts for p in f]
        assert sorted(chosen) == sorted(str(p) for p in files)  # each file in exactly one shard
        assert sorted(a for _, m in parts for a, _ in m) == sorted(a for a, _ in missing)


def test_manifest_run_records_every_input_once_with_clear_errors(setup: Setup, tmp_path: Path) -> None:
    proc = _cli("predict", "--files-from", str(setup.manifest), "-m", str(setup.bundle), "-o", str(tmp_path))
    assert proc.returncode == 1, proc.stderr  # the folder's text file and the missing file fail
    records = _records(tmp_path)
    assert set(records) == {str(p) for p in setup.files[:7]} | {
        str(setup.root / "folder" / "notes.txt"), str(setup.root / "missing.dcm")}
    assert records[str(setup.root / "missing.dcm")]["error_code"] == "not_found"
    assert records[str(setup.root / "folder" / "notes.txt")]["error_code"] == "not_dicom"


def test_manifest_from_stdin(setup: Setup, tmp_path: Path) -> None:
    text = "\n".join(str(p) for p in setup.files[:2]) + "\n"
    proc = _cli("predict", "--files-from", "-", "-m", str(setup.bundle), "-o", str(tmp_path), stdin=text)
    assert proc.returncode == 0, proc.stderr
    assert set(_records(tmp_path)) == {str(p) for p in setup.files[:2]}


def test_shards_then_merge_equal_one_run(setup: Setup, tmp_path: Path) -> None:
    common = ("--files-from", str(setup.manifest), "-m", str(setup.bundle))
    _cli("predict", *common, "-o", str(tmp_path / "whole"))
    for k in range(3):
        _cli("predict", *common, "-o", str(tmp_path / f"part{k}"), "--shard", f"{k}/3")
    parts = [str(tmp_path / f"part{k}") for k in range(3)]
    proc = _cli("merge", *parts, "-o", str(tmp_path))
    assert proc.returncode == 1, proc.stdout + proc.stderr  # complete, with the two failed inputs
    assert "incomplete" not in proc.stdout
    whole, merged = _records(tmp_path / "whole"), _records(tmp_path)
    assert whole.keys() == merged.keys()
    for key, record in whole.items():
        other = merged[key]
        for field in ("status", "error_code", "message", "probability", "gated", "positive", "mask_area_px"):
            assert record[field] == other[field], (key, field)
        for kind, rel in dict(other["outputs"]).items():  # type: ignore[call-overload]
            assert (tmp_path / rel).is_file() and rel.startswith("part"), (kind, rel)
    rows = list(csv.DictReader((tmp_path / "worklist.csv").open()))
    whole_rows = list(csv.DictReader((tmp_path / "whole" / "worklist.csv").open()))
    assert [r["study_uid"] for r in rows] == [r["study_uid"] for r in whole_rows]
    assert all((tmp_path / r["outputs"]).is_dir() for r in rows)


def test_merge_names_a_missing_shard_and_refuses_to_overwrite_a_batch(setup: Setup, tmp_path: Path) -> None:
    common = ("--files-from", str(setup.manifest), "-m", str(setup.bundle))
    for k in (0, 2):
        _cli("predict", *common, "-o", str(tmp_path / f"part{k}"), "--shard", f"{k}/3")
    proc = _cli("merge", str(tmp_path / "part0"), str(tmp_path / "part2"), "-o", str(tmp_path / "m"))
    assert proc.returncode == 1 and "shards missing: 1/3" in proc.stdout
    proc = _cli("merge", str(tmp_path / "part0"), "-o", str(tmp_path / "part2"))
    assert proc.returncode == 2 and "not written by `triage merge`" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_options_are_one_line_errors(setup: Setup, tmp_path: Path) -> None:
    base = ("predict", "-m", str(setup.bundle), "-o", str(tmp_path / "o"))
    for args, needle in (
        (("--files-from", str(setup.manifest), "--shard", "3/2"), "0 <= K <= N-1"),
        (("--files-from", str(tmp_path / "nope.txt")), "No such file"),
        ((), "no inputs"),
        ((str(setup.files[0]), "--engine", "spark"), "'spark' is not one of 'local', 'ray'"),
        ((str(setup.files[0]), "--column", "path"), "--column applies"),
    ):
        proc = _cli(*base, *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert needle in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
    assert not (tmp_path / "o" / "results.jsonl").exists()
