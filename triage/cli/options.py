"""Option sets declared once and shared by several commands, and the one-line error of every command.

An option set is a frozen dataclass whose fields carry their Typer declaration::

    @dataclass(frozen=True)
    class Retry:
        max_attempts: Annotated[int, typer.Option(min=1, help="Attempts per study.")] = 8

    @app.command()
    @option_sets
    def watch(folder: ..., retry: Retry) -> None: ...

:func:`option_sets` shows Typer each field as its own ``--option`` and hands the command one ``Retry``
object, so a set used by two commands (``watch`` and ``listen``; ``train classifier`` and ``train
saliency``) is spelled in one place and reaches the code as a typed object.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any, Literal, NoReturn, TypeVar

import typer

Device = Literal["auto", "cpu", "cuda"]
F = TypeVar("F", bound=Callable[..., Any])


def fail(command: str, message: str) -> NoReturn:
    """Print a one-line error for `command` and exit with status 2 (bad usage or input)."""
    typer.echo(f"triage {command}: error: {message}", err=True)
    raise typer.Exit(2)


def _field_parameters(cls: type) -> list[inspect.Parameter]:
    hints = typing.get_type_hints(cls, include_extras=True)
    params = []
    for field in dataclasses.fields(cls):
        if field.default is not dataclasses.MISSING:
            default: Any = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = inspect.Parameter.empty
        params.append(inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                        annotation=hints[field.name]))
    return params


def option_sets(func: F) -> F:
    """``func`` with each dataclass-typed parameter replaced, for Typer, by the dataclass's fields."""
    hints = typing.get_type_hints(func, include_extras=True)
    params: list[inspect.Parameter] = []
    sets: dict[str, tuple[type, list[str]]] = {}
    for param in inspect.signature(func).parameters.values():
        annotation = hints.get(param.name, param.annotation)
        if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
            fields = _field_parameters(annotation)
            clash = [p.name for p in fields if p.name in {q.name for q in params}]
            if clash:
                raise TypeError(f"{func.__name__}: option {clash[0]!r} declared twice")
            sets[param.name] = (annotation, [p.name for p in fields])
            params.extend(fields)
        else:
            params.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=annotation))

    @functools.wraps(func)
    def wrapper(**kwargs: Any) -> Any:
        for name, (cls, names) in sets.items():
            kwargs[name] = cls(**{n: kwargs.pop(n) for n in names})
        return func(**kwargs)

    del wrapper.__wrapped__  # Typer must see the new signature
    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return typing.cast(F, wrapper)
