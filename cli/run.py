"""Run a recipe: probe the pair, build the edit and its controls, score every condition, report.

Runs an experiment recipe (see recipes/control-experiment.yaml) into OUT: probe/ (RSF of the observed pair),
edit/ (adapters of the edit and its matched controls, with model cards), results.jsonl (one row per
condition: probe metrics next to behaviour metrics with stderr), report.md and plots. The store is append-
only; after an interruption (even kill -9) rerun with --resume and nothing already stored is recomputed. A
folder started by a different recipe is refused. `experiment: NAME` at the top of the recipe chooses another
registered kind (listed below).
"""

from __future__ import annotations

import argparse
import textwrap

from rwedit.cli import options


def kinds_text() -> str:
    """The registered experiment kinds, one per line (for ``rwedit run --help``)."""
    try:
        import rwedit.apps  # noqa: F401  (the applications register their kinds on import)
        from rwedit.evals.core import DEFAULT_KIND, experiment_kinds
    except ImportError as e:
        return f"experiment kinds: not available ({e})"
    kinds = list(experiment_kinds())
    width = max((len(k.name) for k in kinds), default=0)
    lines = [f"experiment kinds (`experiment: NAME` at the top of a recipe chooses one; default {DEFAULT_KIND}):"]
    for k in kinds:
        lines.append(textwrap.fill(k.help or "", width=100, initial_indent=f"  {k.name:<{width}}  ",
                                   subsequent_indent=" " * (width + 4)) if k.help else f"  {k.name}")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = kinds_text()
    options.add_recipe_inputs(p)
    options.add_resume(p)
    options.add_shard(p)
    options.add_quiet(p)


def run(args: argparse.Namespace) -> int:
    import rwedit.apps  # noqa: F401  (registers the organism and quickstart kinds)
    from rwedit.apps.plan import plan_recipe
    from rwedit.evals.core import run_recipe

    source, overrides, sets = args.recipe, options.recipe_overrides(args), args.sets
    shard = options.shard(args)
    plan = plan_recipe(source, overrides, sets, args.out, args.cache_dir)  # what it can know fails here
    if not args.quiet:
        print("\n".join(plan.lines()), flush=True)
    out = args.out
    if plan.recipe is not None:  # run the recipe plan checked, its checkpoints already opened, into its folder
        source, overrides, sets, out = plan.recipe, None, (), plan.folder  # (default runs/NAME)
    result = run_recipe(source, out, resume=args.resume, overrides=overrides, sets=sets, shard=shard)
    print("\n".join(result.lines or [f"wrote {result.report or result.folder}"]))
    return 0
