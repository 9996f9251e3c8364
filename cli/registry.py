"""The registry of ``rwedit`` subcommands. Every module named in ``rwedit.cli.COMMAND_MODULES`` becomes one
:class:`Command`; :func:`register` adds one from anywhere else (a plugin)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, one-line ``help`` (the ``rwedit --help`` listing), optional longer
    ``description`` (its own ``--help``), the function adding its options, and the function running it
    (returns the exit status)."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None


_COMMANDS: dict[str, Command] = {}


def register(command: Command) -> Command:
    """Add ``command`` to the registry (a second command of the same name is a programming error)."""
    if command.name in _COMMANDS and _COMMANDS[command.name] is not command:
        raise ValueError(f"a subcommand named {command.name!r} is already registered")
    _COMMANDS[command.name] = command
    return command


def get_command(name: str) -> Command:
    """The registered command ``name``."""
    try:
        return _COMMANDS[name]
    except KeyError:
        raise KeyError(f"no rwedit subcommand {name!r}; registered: {', '.join(_COMMANDS)}") from None


def registered_commands() -> list[Command]:
    """Every registered command, in registration order (the order of ``rwedit --help``)."""
    return list(_COMMANDS.values())
