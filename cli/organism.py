"""Build (or reuse) the offline model organism: CE-pretrained Llama, DPO-aligned, SFT control.

Trains a byte-level BPE tokenizer and a small Llama on the bundled WikiText-2 text (+ the training pairs'
prompts) with transformers.Trainer, then aligns it with TRL's DPO on hh-rlhf training pairs (lines 0-1899)
and trains the SFT control (CE on the chosen responses, same data and steps). --graded adds the graded
objective lambda*L_pref + (1-lambda)*L_CE for every lambda of the recipe. Deterministic from the recipe's
seed; every stage is cached by a hash of its settings under $RWEDIT_CACHE/organism (default
~/.cache/rwedit/organism) and reused. Prints held-out loss and preference metrics before/after; fails if the
aligned model is not measurably aligned. --seeds N builds N independently seeded organisms (the recipe's
seed, +1, ...), each cached apart.
"""

from __future__ import annotations

import argparse

from rwedit.cli import options


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.add_recipe_option(p, "organism.yaml")
    options.add_graded(p)
    options.add_reduced(p)
    options.add_seeds(p)
    options.add_organism_root(p)
    options.add_quiet(p)


def run(args: argparse.Namespace) -> int:
    from rwedit.apps.kinds import OrganismOptions, run_organism_kind
    from rwedit.apps.organism import OrganismConfig

    cfg = OrganismConfig.from_yaml(options.recipe_path(args.recipe, "organism.yaml"))
    result = run_organism_kind(cfg, args.organism_root,
                               overrides=OrganismOptions(graded=args.graded, reduced=args.reduced, seeds=args.seeds))
    print("\n".join(result.lines))
    return 0
