"""Sub-commands imported when they are used, so a short command loads only its own modules.

Most of a short command's wall time is start-up (importing SQLAlchemy, pandas, Dash…), so the
root group knows its sub-commands by name and "module:attribute" and imports one only when
click asks for it: to run it, or to list it in `kiln --help`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any

import typer
from typer._click import Command
from typer.core import TyperGroup


def load_command(name: str, target: str) -> Command:
    """The click command for `target` ("module:attribute", a Typer app or a command function)."""
    module_name, _, attribute = target.partition(":")
    found: typer.Typer | Callable[..., Any] = getattr(importlib.import_module(module_name), attribute)
    if isinstance(found, typer.Typer):
        command: Command = typer.main.get_group(found)
    else:
        single = typer.Typer()
        single.command(name=name)(found)
        command = typer.main.get_group(single).commands[name]
    command.name = name
    return command


class LazyCommands(MutableMapping[str, Command]):
    """A group's commands by name, in the order given; each imported on first access (then
    `on_load()`, if given)."""

    def __init__(self, targets: Mapping[str, str], loaded: Mapping[str, Command] | None = None,
                 on_load: Callable[[], None] | None = None):
        self._targets = dict(targets)
        self._loaded = dict(loaded or {})
        self._targets.update({name: "" for name in self._loaded if name not in self._targets})
        self._on_load = on_load

    def __getitem__(self, name: str) -> Command:
        if name not in self._loaded:
            self._loaded[name] = load_command(name, self._targets[name])
            if self._on_load is not None:
                self._on_load()
        return self._loaded[name]

    def get(self, name: str, default: Any = None) -> Any:
        """The command called `name` (imported now if need be), or `default` if there is none.

        Not Mapping.get: that would turn a KeyError raised while importing into "no such command"."""
        return self[name] if name in self._targets else default

    def __contains__(self, name: object) -> bool:
        return name in self._targets

    def __setitem__(self, name: str, command: Command) -> None:
        self._targets.setdefault(name, "")
        self._loaded[name] = command

    def __delitem__(self, name: str) -> None:
        del self._targets[name]
        self._loaded.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._targets)

    def __len__(self) -> int:
        return len(self._targets)


def lazy_group(targets: Mapping[str, str], on_load: Callable[[], None] | None = None) -> type[TyperGroup]:
    """A TyperGroup class (for `typer.Typer(cls=...)`) whose commands are `targets`, loaded lazily
    (`on_load()` after each)."""

    class LazyGroup(TyperGroup):
        def __init__(self, **attrs: Any):
            super().__init__(**attrs)
            self.commands = LazyCommands(targets, loaded=self.commands, on_load=on_load)

    return LazyGroup
