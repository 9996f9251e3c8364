"""Check a recipe and its checkpoints without loading any weights, and estimate what the run will need.

Parses the recipe as `rwedit run` would (every key, every name it refers to, export: entries), opens the
checkpoints from their headers only and checks them against their configs and each other (architecture, layer
counts, every tensor's shape, stored dtypes, the shards the index names, tokenizer files and vocabularies) and
the edit against them (layers, roles, windows), opens each data file at its first records, and prints each
stage's peak memory on the recipe's device, its forward tokens and its time (at rates measured here, or a stated
one), the conditions,
the sources' commits or fingerprints, and what the run writes against the free disk. No tensor is read. Exit 2
names the first thing that would have failed; `rwedit run` prints the same plan before it starts.
"""

from __future__ import annotations

import argparse

from rwedit.cli import options


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.add_recipe_inputs(p)
    options.add_shard(p)
    p.add_argument("--gflops", type=options.positive_number, default=None,
                   help="float32 compute rate for the time estimates, GFLOP/s (default: measured here at the model's "
                        "shapes by a probe of ~0.2 s, once: kept in $RWEDIT_CACHE/rates.json)")


def run(args: argparse.Namespace) -> int:
    from rwedit.apps.plan import plan_recipe  # importing rwedit.apps registers the application kinds

    options.shard(args)  # a share that cannot be, or one the launcher's environment contradicts
    plan = plan_recipe(args.recipe, options.recipe_overrides(args), args.sets, args.out, args.cache_dir)
    print("\n".join(plan.lines(args.gflops * 1e9 if args.gflops else None)))
    return 0
