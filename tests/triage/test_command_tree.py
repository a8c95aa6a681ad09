"""The `triage` command tree: the root lists its own commands and those the ``triage.commands`` entry-point
group registers (training, export, serving), in help panels; a package is imported only when one of its
commands is asked for; a command whose package cannot be loaded prints a one-line hint.

The subprocess tests run the installed entry points (``pip install -e .`` writes them), with torch blocked
when the suite runs with TRIAGE_BLOCK_TORCH=1 (``make test``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from triage import __version__
from triage.cli.main import app
from triage.cli.plugins import GROUP, PANELS, CommandTree, command_entry_points

ROOT = Path(__file__).resolve().parents[2]
UPPER = ("training", "export", "serving")


def _triage(*args: str, columns: int = 80) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": str(columns), "TERM": "dumb"}
    return subprocess.run(
        [sys.executable, "-m", "triage.cli.main", *args], capture_output=True, text=True, cwd=ROOT, env=env,
        check=False,
    )


def _imports_after(*args: str) -> set[str]:
    """The top-level packages imported by ``triage ARGS`` (help only: nothing runs)."""
    script = (
        "import sys\nfrom triage.cli.main import app\n"
        f"try:\n    app({list(args)!r}, prog_name='triage')\nexcept SystemExit:\n    pass\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.split("\n")[-2].split())


def test_the_entry_point_group_is_installed() -> None:
    names = set(command_entry_points())
    expected = {
        *("train", "experiment", "folds", "export", "export-saliency"),
        *("watch", "listen", "poll", "jobs"),
    }
    assert expected <= names, f"the {GROUP} entry points are missing: reinstall (pip install -e .)"


def test_version_flag() -> None:
    proc = _triage("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"triage {__version__}"


def test_help_groups_every_command_in_its_panel_in_order() -> None:
    proc = _triage("--help")
    assert proc.returncode == 0, proc.stderr
    panels: dict[str, list[str]] = {}
    current = None
    for line in proc.stdout.splitlines():
        title = re.match(r"[╭+]─+ (\w[\w ]*?) ─", line)
        if title:
            current = title.group(1)
            panels[current] = []
        elif current and (row := re.match(r"│ ([a-z][a-z-]*) +\S", line)):
            panels[current].append(row.group(1))
    assert [p for p in panels if p in PANELS] == list(PANELS)
    assert set(panels["Data"]) == {"synth", "contact-sheet", "folds"}
    assert set(panels["Train"]) == {"train", "experiment", "shortcut-experiment"}
    assert set(panels["Export"]) == {"export", "export-saliency"}
    assert set(panels["Predict"]) == {"predict", "merge", "evaluate"}
    assert set(panels["Services"]) == {"watch", "listen", "poll", "jobs"}


def test_every_short_help_is_one_sentence_that_fits_an_80_column_terminal() -> None:
    proc = _triage("--help", columns=80)
    rows = [line for line in proc.stdout.splitlines() if re.match(r"│ [a-z]", line)]
    assert rows and all(line.rstrip(" │").endswith(".") for line in rows), "\n".join(rows)


def test_choices_and_ranges_show_in_help() -> None:
    predict = _triage("predict", "--help", columns=200).stdout
    assert "auto|cpu|cuda" in predict and "auto|fp32|int8|tensorrt-fp16|tensorrt-int8" in predict
    assert "x>=1" in predict  # --batch-size
    train = _triage("train", "classifier", "--help", columns=200).stdout
    assert "seed|cpu|small|tiny" in train and "hirescam|gradcam" in train
    watch = _triage("watch", "--help", columns=200).stdout
    assert "keep|move|delete" in watch and "debug|info|warning|error" in watch and "0<=x<=65535" in watch


def test_a_bad_choice_is_one_line_with_exit_status_2() -> None:
    proc = _triage("predict", "x.dcm", "--model", "m", "--out", "o", "--device", "gpu")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "triage predict: error: Invalid value for '--device': 'gpu' is not one of 'auto', 'cpu', 'cuda'. "
        "(see triage predict --help)"
    ]


def test_runtime_commands_load_no_other_package() -> None:
    assert not _imports_after("predict", "--help") & set(UPPER)
    assert not _imports_after("evaluate", "--help") & set(UPPER)


def test_root_help_loads_only_the_light_command_modules() -> None:
    """``triage --help`` reads each package's Typer app (for its panel) but none of the code it runs."""
    assert not _imports_after("--help") & {"torch", "onnx", "pynetdicom", "watchdog", "prometheus_client"}


def test_a_command_whose_package_cannot_load_prints_a_one_line_hint() -> None:
    broken = EntryPoint(name="train", value="no_such_package.cli:app [training]", group=GROUP)

    class Tree(CommandTree):
        find_entry_points = staticmethod(lambda: {"train": broken})

    root = typer.Typer(cls=Tree, add_completion=False)

    @root.callback()
    def main() -> None:
        """The root."""

    @root.command()
    def predict() -> None:
        """A runtime command."""

    result = CliRunner().invoke(root, ["train", "classifier", "--epochs", "3"])
    assert result.exit_code == 2
    assert result.output.strip() == (
        "triage train: error: needs the training extra: pip install 'triage[training]' "
        "(No module named 'no_such_package')"
    )
    listed = CliRunner().invoke(root, ["--help"])
    assert listed.exit_code == 0 and "train" in listed.output and "Not installed" in listed.output


@pytest.mark.parametrize("command", ["train", "export", "watch"])
def test_commands_registered_by_entry_points_run_through_the_root(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: triage " + command in " ".join(result.output.split())
