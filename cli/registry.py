"""The registry of ``rwedit`` subcommands. Every module named in ``rwedit.cli.COMMAND_MODULES`` becomes one
:class:`Command`; :func:`register` adds one from anywhere else (a plugin, loaded before every command)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable

from rwedit.registry import Registry


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


_COMMANDS: Registry[Command] = Registry("rwedit subcommand")


def register(command: Command, *, replace: bool = False) -> Command:
    """Add ``command`` to the registry (a second command of the same name is refused unless ``replace``)."""
    return _COMMANDS.register(command.name, command, replace=replace)


def get_command(name: str) -> Command:
    """The registered command ``name``."""
    return _COMMANDS[name]


def registered_commands() -> list[Command]:
    """Every registered command, in registration order (the order of ``rwedit --help``)."""
    return list(_COMMANDS.values())
