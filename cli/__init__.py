"""The ``rwedit`` command line: a thin layer over the Python API, one module per subcommand.

Each module in :data:`COMMAND_MODULES` registers a :class:`~rwedit.cli.registry.Command` (name, help,
``add_arguments(parser)``, ``run(args) -> int``); options shared by several commands live in
:mod:`rwedit.cli.options`. Adding a subcommand is one new module here plus one entry in
:data:`COMMAND_MODULES`. Only the chosen command's options are built, so ``rwedit --help`` and light
commands do not import torch.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import sys
from typing import Iterable, Sequence

from rwedit import __version__
from rwedit.cli.options import HelpFormatter
from rwedit.cli.registry import Command, get_command, register, registered_commands
from rwedit.errors import RweditError
from rwedit.registry import load_plugins
from rwedit.runtime import using

DESCRIPTION = """\
rwedit: weight-space interventions on Hugging Face causal language models.

Measure where post-training changed a model's weights (read vs write pathway), apply closed-form
rank-1 edits with matched controls as PEFT adapters, and score their behavioural effect.
Every command reads local folders or Hub ids (org/name[@revision]); weights are streamed tensor by
tensor from safetensors, so a pair of large checkpoints never sits in memory at once.
"""

EPILOG = """\
examples:
  rwedit quickstart                               offline, end to end on the bundled model organism:
                                                  probes, edits vs controls, lm-eval scores, report
  rwedit organism                                 build/reuse the organism (pretrained, aligned, SFT)
  rwedit archs                                    supported architectures and their role modules
  rwedit deltas --base BASE --post POST --out deltas/
                                                  per-layer, per-role ||dW||_F of a checkpoint pair
  rwedit probe --base BASE --post POST --calib text.txt.gz --out probe/
                                                  RSF grid (read/write side vs activation/prediction
                                                  subspaces, random null), plots, summary.md
  rwedit svd --base BASE --post POST --out svd/   singular-value scaling and rotation consistency
  rwedit edit --spec recipes/edit-example.yaml --out edits/
                                                  rank-1 edit + matched controls as PEFT adapters
  rwedit apply edits/adapters/NAME --prompt "..."  base vs edited generation
  rwedit export edits/adapters/NAME --push-to-hub you/name
  rwedit eval --model BASE --adapters edits/adapters --tasks rwedit_hh_preference --limit 100 --out scores/
                                                  lm-eval + direct metrics, base and each adapter
  rwedit run recipes/control-experiment.yaml --out runs/ctl
                                                  the causal control experiment: probe, edits,
                                                  scores, report (--resume after an interruption)
  rwedit plan recipes/control-experiment.yaml     check recipe + checkpoints (headers only), estimate the run
  rwedit report runs/ctl                          rebuild report.md and plots from results.jsonl
  rwedit recipes                                  the shipped recipes; `rwedit run NAME` runs one by name
  rwedit tasks                                    the bundled lm-eval tasks (--path: for lm_eval --include_path)
  rwedit zoo                                      well-known base/post pairs and series on the Hub, cached or not
  rwedit export-results runs/ctl --out ds/ --push-to-hub you/ctl-results
                                                  a run's tables as a Hub dataset (datasets.load_dataset)

Run `rwedit COMMAND --help` for the options of a command.
"""

#: the subcommand modules (``rwedit.cli.NAME``; the command is NAME with - for _), in ``rwedit --help`` order
COMMAND_MODULES = (
    "archs",
    "deltas",
    "probe",
    "explain",
    "svd",
    "edit",
    "export",
    "apply",
    "run",
    "plan",
    "report",
    "eval",
    "organism",
    "quickstart",
    "recipes",
    "tasks",
    "zoo",
    "export_results",
)


def load_commands() -> list[Command]:
    """Register every module of :data:`COMMAND_MODULES` (its docstring's first paragraph the summary, the rest its
    ``--help`` description; ``add_arguments(parser)``, ``run(args) -> int``) and return the registered commands."""
    for name in COMMAND_MODULES:
        mod = importlib.import_module(f"{__name__}.{name}")
        command = name.replace("_", "-")  # module export_results is the command export-results
        if command not in {c.name for c in registered_commands()}:
            first, _, rest = inspect.cleandoc(mod.__doc__ or name).partition("\n\n")  # whole first paragraph
            description = " ".join(rest.split()) or None  # the help formatter wraps it again
            register(Command(command, help=" ".join(first.split()).rstrip(".").replace("``", "`"), description=description,
                             add_arguments=mod.add_arguments, run=mod.run))
    return registered_commands()


def build_parser(commands: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The ``rwedit`` parser. Every subcommand is listed; the options of those named in ``commands``
    (default: all) are added, which is all parsing a command line naming one of them needs."""
    parser = argparse.ArgumentParser(
        prog="rwedit", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"rwedit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = None if commands is None else set(commands)
    for cmd in load_commands():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.description, formatter_class=HelpFormatter)
        if wanted is None or cmd.name in wanted:
            cmd.add_arguments(p)
    return parser


def _command_named(argv: Sequence[str]) -> str | None:
    """The subcommand an argument list names: its first word that is not an option (the top-level
    options take no value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``rwedit`` command line; returns the exit status: 0 done, 2 refused (bad input, with a
    message saying what to do), 1 an unexpected failure (a bug; ``--debug`` shows its traceback), 130
    interrupted. ``--debug`` may stand anywhere on the line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    name = _command_named(argv)
    try:
        load_plugins()  # before the parser: a plugin's subcommands, architectures and kinds are known to every command
    except RweditError as e:  # a broken plugin: one line naming it, like any refused input
        if debug:
            raise
        print(f"rwedit: error: {describe_error(e)[1]}", file=sys.stderr)
        return 2
    parser = build_parser([name] if name else [])
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        with contextlib.ExitStack() as stack:  # the run-wide settings, once for every command
            stack.enter_context(using(progress=not getattr(args, "quiet", False),
                                      cache_dir=getattr(args, "cache_dir", None),
                                      allow_pickle=getattr(args, "allow_pickle", None) or None))
            if getattr(args, "quiet", False):
                stack.enter_context(library_bars_off())
            return get_command(args.command).run(args)
    except BrokenPipeError:  # `rwedit recipes | head`: the reader has gone, which is not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"rwedit {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 — the one place every failure is turned into a message
        if debug:
            raise
        status, msg = describe_error(e)
        print(f"rwedit {args.command}: error: {msg}", file=sys.stderr)
        return status


@contextlib.contextmanager
def library_bars_off():
    """``--quiet``: transformers' and the Hub's own progress bars (``Loading weights``, downloads) off while
    the command runs, as rwedit's are."""
    from transformers.utils import logging

    was = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            logging.enable_progress_bar()


def describe_error(e: BaseException) -> tuple[int, str]:
    """Exit status and one- or two-line message for an exception that reached the CLI."""
    if isinstance(e, RweditError):
        return 2, str(e)
    if isinstance(e, OSError) and (e.filename or e.strerror):  # a path the user gave: missing, denied, disk full
        where = f"{e.filename}: " if e.filename else ""
        return 2, f"{where}{e.strerror or e}"
    if isinstance(e, MemoryError):
        return 2, "out of memory: ask for less at once (smaller batches, fewer layers or roles) or use a bigger machine"
    first = str(e).splitlines()[0] if str(e) else ""
    return 1, (f"unexpected {type(e).__name__}: {first}\nThis is a bug in rwedit, not in your input: rerun with "
               f"--debug for the traceback and report it.")


__all__ = ["DESCRIPTION", "EPILOG", "COMMAND_MODULES", "Command", "build_parser", "describe_error", "main", "register"]


if __name__ == "__main__":
    sys.exit(main())
