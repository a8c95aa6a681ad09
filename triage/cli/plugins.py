"""Commands that other packages own, found through the ``triage.commands`` entry-point group.

``training``, ``export`` and ``serving`` each declare a Typer app next to the code its commands call and
list its command names in ``pyproject.toml``::

    [project.entry-points."triage.commands"]
    train = "training.cli:app [training]"
    watch = "serving.cli:app [serving]"

The root group (:class:`CommandTree`) lists those names beside its own commands and imports a package's
app only when one of its commands is asked for (to run, or for ``--help``), so ``triage predict`` never
loads them. When the entry point's extra is not installed, or its module cannot be imported, the command
is still listed and prints a one-line hint (``pip install 'triage[training]'``) instead of a traceback.
The runtime never names those packages: it only reads the entry-point group.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import EntryPoint, PackageNotFoundError, distribution, entry_points
from typing import Any

import typer
from typer._click.exceptions import ClickException, UsageError  # typer vendors its click
from typer.core import TyperGroup

GROUP = "triage.commands"
# `triage evaluate --model RUN...`: a callable (runs, device) -> Cascade from the package that trains them.
RUN_LOADERS = "triage.run_loaders"
# The help panels of `triage --help`, in this order; commands without one come after them.
PANELS = ("Data", "Train", "Export", "Predict", "Services")
UNAVAILABLE_PANEL = "Not installed"
_EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")
_REQUIREMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def command_entry_points() -> dict[str, EntryPoint]:
    """The registered commands by name (the first registration of a name wins)."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUP):
        found.setdefault(ep.name, ep)
    return found


def missing_requirements(ep: EntryPoint) -> list[str]:
    """The distributions of the entry point's extras (``[training]``) that are not installed."""
    dist = getattr(ep, "dist", None)
    if dist is None or not ep.extras:
        return []
    missing = []
    for requirement in dist.requires or []:
        spec, _, marker = requirement.partition(";")
        extra = _EXTRA_MARKER.search(marker)
        name = _REQUIREMENT_NAME.match(spec.strip())
        if extra is None or extra.group(1) not in ep.extras or name is None:
            continue
        try:
            distribution(name.group(0))
        except PackageNotFoundError:
            missing.append(name.group(0))
    return missing


def hint(ep: EntryPoint, reason: str) -> str:
    """The one line printed by a command that cannot be loaded."""
    if ep.extras:
        extras = ",".join(ep.extras)
        return f"triage {ep.name}: error: needs the {extras} extra: pip install 'triage[{extras}]' ({reason})"
    return f"triage {ep.name}: error: cannot be loaded ({reason}); reinstall triage"


def unavailable_command(ep: EntryPoint, reason: str) -> Any:
    """A stand-in for a command whose package cannot be loaded: listed in help, exits 2 with a hint."""
    message = hint(ep, reason)
    stand_in = typer.Typer(add_completion=False)

    @stand_in.command(
        ep.name,
        help=message.split(": error: ", 1)[1],
        rich_help_panel=UNAVAILABLE_PANEL,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        add_help_option=False,
    )
    def _unavailable() -> None:
        typer.echo(message, err=True)
        raise typer.Exit(2)

    return typer.main.get_command(stand_in)


def load_plugin(group: str, what: str) -> Any:
    """The object of the first entry point in ``group``; ValueError (one line naming the extra) when there
    is none or it cannot be loaded."""
    found = list(entry_points(group=group))
    if not found:
        raise ValueError(f"{what}: nothing is registered in the entry-point group {group}; reinstall triage")
    ep = found[0]
    missing = missing_requirements(ep)
    try:
        if missing:
            raise ImportError("missing: " + ", ".join(missing))
        return ep.load()
    except ImportError as exc:
        extras = ",".join(ep.extras)
        need = f"the {extras} extra: pip install 'triage[{extras}]'" if extras else "a full install"
        raise ValueError(f"{what} needs {need} ({exc})") from None


class CommandTree(TyperGroup):
    """The root group: its own commands plus the entry-point group's, each package loaded on first use."""

    find_entry_points: Callable[[], dict[str, EntryPoint]] = staticmethod(command_entry_points)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._plugins: dict[str, EntryPoint] | None = None
        self._apps: dict[str, Any] = {}

    def plugins(self) -> dict[str, EntryPoint]:
        if self._plugins is None:
            self._plugins = {n: ep for n, ep in self.find_entry_points().items() if n not in self.commands}
        return self._plugins

    def _load(self, ctx: typer.Context, ep: EntryPoint) -> Any:
        missing = missing_requirements(ep)
        if missing:
            return unavailable_command(ep, "missing: " + ", ".join(missing))
        try:
            if ep.value not in self._apps:
                obj = ep.load()
                self._apps[ep.value] = typer.main.get_group(obj) if isinstance(obj, typer.Typer) else obj
        except ImportError as exc:
            return unavailable_command(ep, str(exc))
        app = self._apps[ep.value]
        command = app.get_command(ctx, ep.name) if isinstance(app, TyperGroup) else app
        if command is None:
            return unavailable_command(ep, f"{ep.value} has no command {ep.name!r}")
        return command

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = self.commands.get(cmd_name)
        if command is None and cmd_name in self.plugins():
            command = self._load(ctx, self.plugins()[cmd_name])
            self.commands[cmd_name] = command
        return command

    def list_commands(self, ctx: Any) -> list[str]:
        names: Sequence[str] = [*self.commands, *self.plugins()]
        order = {name: i for i, name in enumerate(names)}

        def panel_rank(name: str) -> tuple[int, int]:
            panel = getattr(self.get_command(ctx, name), "rich_help_panel", None)
            rank = PANELS.index(panel) if panel in PANELS else len(PANELS) + (panel == UNAVAILABLE_PANEL)
            return rank, order[name]

        return sorted(dict.fromkeys(names), key=panel_rank)

    def main(  # type: ignore[override]
        self, args: Sequence[str] | None = None, prog_name: str | None = None, standalone_mode: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Run the command line; a usage error (bad value, unknown option) is one line on stderr, exit 2:
        ``triage predict: error: Invalid value for '--device': 'gpu' is not one of 'auto', 'cpu', 'cuda'.``"""
        if not standalone_mode:
            return super().main(args, prog_name, standalone_mode=False, **kwargs)
        try:
            status = super().main(args, prog_name, standalone_mode=False, **kwargs)
        except UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "triage"
            message = exc.format_message().replace("Value error, ", "")  # pydantic's prefix on choices
            typer.echo(f"{where}: error: {message} (see {where} --help)", err=True)
            sys.exit(exc.exit_code)
        except ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(status if isinstance(status, int) else 0)

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        if args and not self.plugins() and self.get_command(ctx, args[0]) is None:
            typer.echo(
                f"triage: no commands are registered in the entry-point group {GROUP} (train, watch, "
                "... come from there): reinstall the package (pip install -e .)",
                err=True,
            )
        return super().resolve_command(ctx, args)
