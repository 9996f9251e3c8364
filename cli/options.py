"""Options shared by several ``rwedit`` subcommands, each declared once here with one help text.

A command module adds what it needs (``add_pair(p)``, ``add_quiet(p)`` ...) and declares only the
options that are its own. Where a flag sets a field of a configuration class, its help comes from that
field (:func:`config_help`), so the command line and the recipe documentation say the same thing.
"""

from __future__ import annotations

import argparse
import importlib
import math
from typing import Any

HUB_OR_FOLDER = "local folder or Hub id org/name[@revision]"


class HelpFormatter(argparse.HelpFormatter):
    """Wraps each paragraph of a description or epilog on its own; a paragraph with indented lines (a
    list, examples) is kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out = []
        for para in text.strip("\n").split("\n\n"):
            lines = para.splitlines()
            if any(line.startswith(" ") for line in lines):
                out.append("\n".join(indent + line for line in lines))
            else:
                out.append(super()._fill_text(para, width, indent))
        return "\n\n".join(out)


def config_help(config: Any, field: str, fallback: str) -> str:
    """The help text of ``field`` of a configuration class (``rwedit.config.Config``: ``Cls.help(field)``),
    given as the class or as ``"module:Class"`` (imported only when the command's options are built);
    ``fallback`` when the class has no help for it. ``%`` is escaped for argparse."""
    if isinstance(config, str):
        module, _, name = config.partition(":")
        config = getattr(importlib.import_module(module), name)
    try:
        text = config.help(field)
    except (AttributeError, KeyError, TypeError):  # not (yet) a Config, or no such field
        text = ""
    text = text.strip() if isinstance(text, str) else ""
    return (text or fallback).replace("%", "%%")


# --- value parsers ---------------------------------------------------------------------------------

def ints(text: str) -> tuple[int, ...]:
    """``"1,4,16"`` -> ``(1, 4, 16)`` (an argparse ``type``)."""
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _at_least(minimum: int, expected: str, word: str | None = None):
    """An argparse ``type``: an integer >= ``minimum`` (or ``word``, e.g. ``all``), else ``expected...``."""
    def parse(text: str):
        if word is not None and text.strip().lower() == word:
            return word
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    return parse


#: argparse types: a number of things that may be none; held-out items (all, or >= 2 for a standard error);
#: counts and sizes
count = _at_least(0, "an integer >= 0")
items = _at_least(2, "all or a number of items >= 2", word="all")
positive_int = _at_least(1, "a positive integer")


def positive_number(text: str) -> float:
    """An argparse ``type``: a finite number > 0 (a rate, a size)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def roles_arg(text: str | None) -> tuple[str, ...] | None:
    """``"q,k, down"`` -> ``("q", "k", "down")``; None or empty -> None (every role)."""
    return tuple(x.strip() for x in text.split(",") if x.strip()) if text else None


# --- checkpoints -------------------------------------------------------------------------------------

def _default_note(when_omitted: str | None) -> str:
    return f" (default: {when_omitted})" if when_omitted else ""


# One vocabulary: a command that compares a pair takes --base/--post; a command that loads one model
# (edit, apply, eval) takes --model. run and quickstart compare a pair, and accept --model as an alias of
# --base for recipes written before.

BASE_HELP = f"base checkpoint: {HUB_OR_FOLDER}"


def add_model(p: argparse.ArgumentParser, *, required: bool = False, when_omitted: str | None = None) -> None:
    p.add_argument("--model", required=required,
                   help=f"the model: {HUB_OR_FOLDER}{_default_note(when_omitted)}")


def add_base(p: argparse.ArgumentParser, *, required: bool = False, when_omitted: str | None = None,
             dest: str = "base", model_alias: bool = False) -> None:
    """``--base`` of a pair (``model_alias``: ``--model`` is accepted for it too)."""
    flags = ("--base", "--model") if model_alias else ("--base",)
    p.add_argument(*flags, dest=dest, required=required, help=f"{BASE_HELP}{_default_note(when_omitted)}")


def add_post(p: argparse.ArgumentParser, *, required: bool = False, when_omitted: str | None = None) -> None:
    p.add_argument("--post", required=required,
                   help=f"post-trained checkpoint of the same architecture, or a LoRA adapter folder over the "
                   f"base{_default_note(when_omitted)}")


def _switch(flag: str, help: str):
    """An ``add_*`` of one on/off flag shared by several commands."""
    return lambda p: p.add_argument(flag, action="store_true", help=help)


add_allow_pickle = _switch("--allow-pickle",
                           "accept *.bin pickle weights (they can execute code when loaded; off by default)")
add_overwrite = _switch("--overwrite",
                        "replace an existing --out folder whole (without it, an existing non-empty folder is refused)")
add_force = _switch("--force", "apply adapters even to a model whose weights differ from the base they were made for")
add_resume = _switch("--resume", "continue the run stored in --out (nothing stored is recomputed)")
add_quiet = _switch("--quiet", "no progress bars or progress output")
add_graded = _switch("--graded", "also train the graded objective for every lambda of the recipe's align.lambdas")
add_reduced = _switch("--reduced", "a seconds-scale organism (tiny dims, few steps): a smoke test of the whole path")


def add_seeds(p: argparse.ArgumentParser) -> None:
    """``--seeds N``: N independently seeded organisms."""
    p.add_argument("--seeds", type=int, metavar="N",
                   help="N independently seeded organisms (the recipe's seed, +1, …), each built and cached apart "
                        "(default 1)")


def add_pair(p: argparse.ArgumentParser, many: bool = False) -> None:
    """``--base``, ``--post`` and ``--allow-pickle``: a checkpoint pair (``many``: ``--post`` may be repeated,
    several fine-tunes of one base, or left out for ``--series``, which the command then checks)."""
    add_base(p, required=True)
    p.add_argument("--post", required=not many, action="append" if many else "store",
                   help="post-trained checkpoint of the same architecture, or a LoRA adapter folder over the base"
                   + ("; repeat it to compare several fine-tunes of one base" if many else ""))
    add_allow_pickle(p)
    p.add_argument("--allow-dtype-mismatch", action="store_true",
                   help="compare checkpoints stored in different dtypes (e.g. float32 vs bfloat16); the summary "
                   "then states the rounding-noise floor such a delta carries")


def add_roles(p: argparse.ArgumentParser) -> None:
    """``--roles`` (parse with :func:`roles_arg`)."""
    p.add_argument("--roles", help="comma-separated subset of roles among q k v o up gate down unembed "
                   "(default: every role the command covers)")


# --- running -----------------------------------------------------------------------------------------

def add_out(p: argparse.ArgumentParser, *, what: str = "output folder", default: str | None = None,
            required: bool = False, when_omitted: str | None = None) -> None:
    """``--out``: where results go; ``what`` names it (folder or file) and ``default``/``when_omitted``
    say what happens without it."""
    note = _default_note(when_omitted or (default and str(default)))
    p.add_argument("--out", default=default, required=required, help=f"{what}{note}")


def device_arg(text: str) -> str:
    """An argparse ``type`` for ``--device``: refused at parse time when this torch cannot use it."""
    from rwedit.errors import DeviceError
    from rwedit.models import check_device

    try:
        return check_device(text)
    except DeviceError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", type=device_arg,
                   help="device of the forward passes: cpu, cuda, or auto (--device-map auto) (default cpu)")


PLACEMENT = "rwedit.models:Placement"
#: flag -> Placement field (the four placement flags; their help is the field's)
PLACEMENT_FLAGS = {"--device-map": "device_map", "--max-memory": "max_memory", "--offload-folder": "offload_folder",
                   "--dtype": "dtype"}


def _placement_type(field: str):
    """An argparse ``type`` checking one placement value as the recipe's ``placement:`` section would (a bad
    JSON map, an unknown strategy or size is refused at parse time, with what to write)."""
    def parse(text: str):
        from rwedit.errors import ConfigError
        from rwedit.models import Placement

        kwargs = {field: text}
        if field == "device_map":  # a map with 'disk' needs the folder, which may come as another flag
            kwargs["offload_folder"] = "-"
        try:
            return getattr(Placement(**kwargs), field)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return parse


class _RecipeSet(argparse.Action):
    """Stores a placement flag as a recipe override (``--set placement.FIELD=VALUE``, ``--set device=...``),
    so a recipe run records it like the YAML key it stands for."""

    def __call__(self, parser, namespace, values, option_string=None):
        import json

        sets = list(getattr(namespace, "sets", None) or [])
        sets.append(f"{self.dest}={json.dumps(values)}")
        namespace.sets = sets


def add_placement(p: argparse.ArgumentParser, *, recipe: bool = False) -> None:
    """``--device`` and the placement flags ``--device-map``, ``--max-memory``, ``--offload-folder``,
    ``--dtype`` (fields of :class:`rwedit.models.Placement`, read back with :func:`placement`). ``recipe``:
    for a command that runs a recipe, each becomes a ``--set`` override of the recipe's ``device`` /
    ``placement.*`` keys (the command then needs :func:`add_set`)."""
    if recipe:
        p.add_argument("--device", dest="device", type=device_arg, action=_RecipeSet, default=argparse.SUPPRESS,
                       help="device of the forward passes: cpu, cuda, or auto (sets the recipe's device:)")
    else:
        add_device(p)
    for flag, field in PLACEMENT_FLAGS.items():
        kw = dict(type=_placement_type(field), metavar=field.split("_")[-1].upper())
        help = config_help(PLACEMENT, field, field.replace("_", " "))
        if recipe:
            p.add_argument(flag, dest=f"placement.{field}", action=_RecipeSet, default=argparse.SUPPRESS,
                           help=f"{help} (sets the recipe's placement.{field})", **kw)
        else:
            p.add_argument(flag, dest=field, help=help, **kw)


def placement(args: argparse.Namespace):
    """The :class:`rwedit.models.Placement` of a command's placement flags (:func:`add_placement`)."""
    from rwedit.models import Placement

    return Placement(**{field: getattr(args, field, None) for field in PLACEMENT_FLAGS.values()})


def add_batch_size(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=positive_int, default=8, help="sequences per forward pass (default 8)")


def add_cache_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", help="activation-statistics cache (default ~/.cache/rwedit/stats or $RWEDIT_CACHE)")


def add_shard(p: argparse.ArgumentParser) -> None:
    """``--shard I/N``: one share of a run's conditions (read back with :func:`shard`)."""
    p.add_argument("--shard", metavar="I/N",
                   help="score share I (0 to N-1) of N disjoint, deterministic shares of the conditions into "
                        "OUT/shards/I-of-N (its own store and lock; start the N processes at once, each resumes on "
                        "its own with --resume); the one that finishes last writes the merged report, and `rwedit "
                        "report OUT` merges them at any time. Default: RANK/WORLD_SIZE (torchrun, accelerate "
                        "launch) or SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT (a job array), if set")


def shard(args: argparse.Namespace):
    """The share of :func:`add_shard` (a ``rwedit.evals.store.Shard``; None for the whole run): ``--shard``, else
    the launcher's environment; the two must agree when both are given."""
    from rwedit.errors import ConfigError
    from rwedit.evals.store import Shard

    given, launched = Shard.parse(args.shard) if args.shard else None, Shard.from_env()
    if given is not None and launched is not None and given != launched:
        raise ConfigError(f"--shard {given} contradicts the launcher's environment, which gives share {launched} "
                          f"(RANK/WORLD_SIZE or the SLURM array): give one of them")
    return given or launched


def add_push(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--push-to-hub", metavar="REPO",
                   help=f"upload to this Hub repo (org/name): the {what}, from your login or HF_TOKEN")
    p.add_argument("--public", action="store_true", help="make the Hub repo public (default: private)")


def add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, dotted, the value read as YAML (repeatable): --set edit.layers=[3] "
                        "--set eval.limit=50; the override is part of the recorded recipe (and of its hash)")


def add_recipe_inputs(p: argparse.ArgumentParser) -> None:
    """What a command that takes a recipe (``run``, ``plan``) reads it with: the recipe, ``--out``, the pair
    overriding the recipe's, ``--set``, the placement flags (as recipe overrides), ``--allow-pickle`` and
    ``--cache-dir``; :func:`recipe_overrides` reads the pair back."""
    p.add_argument("recipe", help="recipe YAML, or the name of a shipped recipe (`rwedit recipes` lists them)")
    add_out(p, when_omitted="the recipe's out:, else runs/NAME")
    add_base(p, dest="model", model_alias=True, when_omitted="the recipe's")
    add_post(p, when_omitted="the recipe's")
    add_set(p)
    add_placement(p, recipe=True)
    add_allow_pickle(p)
    add_cache_dir(p)


def recipe_overrides(args: argparse.Namespace) -> dict:
    """The recipe keys :func:`add_recipe_inputs`' --base/--post override (None: the recipe's own)."""
    return {"model": args.model, "post": args.post}


# --- the model organism ------------------------------------------------------------------------------

def add_recipe_option(p: argparse.ArgumentParser, shipped: str) -> None:
    p.add_argument("--recipe", help=f"recipe YAML (default: the shipped recipes/{shipped})")


def recipe_path(given: str | None, name: str) -> str:
    """The given recipe, else the one shipped with rwedit (``rwedit/recipes``: works from any directory)."""
    from rwedit.recipes import find, shipped

    return str(find(given)) if given else str(shipped()[name.removesuffix(".yaml")])


def add_organism_root(p: argparse.ArgumentParser) -> None:
    p.add_argument("--organism-root", "--root", dest="organism_root",
                   help="where organisms are cached (default $RWEDIT_CACHE/organism)")


def show_probe(res, files: str, title: str) -> int:
    """Print what a probe command wrote and its returned table (a ``ProbeRun``); the exit status."""
    from rwedit.probes.report import markdown_table

    print(f"wrote {res.folder}/{files}")
    print(f"\n{title}:\n\n{markdown_table(res.table)}")
    return 0
