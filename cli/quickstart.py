"""Offline end to end: organism, RSF/SVD probes, trajectories, causal control experiment, report.

Builds (or reuses) the model organism, probes (pretrained -> aligned) and (pretrained -> SFT) with the RSF
grid and the SVD structure probe, measures the training-side RSF trajectories, runs the causal control
experiment (principal read-pathway rank-1 edit vs random, low-variance and write-pathway controls at matched
norm, alpha sweep) scored with the bundled lm-eval tasks and direct metrics, exports the edit adapter with
its model card, and writes OUT/report.md whose first screen says what was found. The organism is built once
(minutes on a CPU) and cached; later runs reuse it. --model/--post run the same on any pair. Rerunning into
the same OUT resumes. Every stage's settings are checked against the model before any work (the organism's
from its settings, before training). Prints a line per stage and a progress bar per training run and scoring
pass, and ends with the findings table (--quiet: the table alone). --reduced runs the same path on a
seconds-scale organism with the data capped (about a minute). --seeds N runs every stage on N independently
seeded organisms into OUT/seed_S/ and pools every claim over them (OUT/report.md, OUT/findings.csv: per seed and
pooled, with a t interval over seeds and the count of seeds on which it holds).
"""

from __future__ import annotations

import argparse

from rwedit.cli import options


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.add_recipe_option(p, "quickstart.yaml")
    options.add_out(p, default="runs/quickstart")
    options.add_base(p, dest="model", model_alias=True, when_omitted="the organism's pretrained model")
    options.add_post(p, when_omitted="the organism's aligned model; with --model")
    options.add_allow_pickle(p)
    p.add_argument("--sft", help="optional second post-trained checkpoint to probe (e.g. an SFT control)")
    options.add_graded(p)
    options.add_reduced(p)
    options.add_seeds(p)
    options.add_organism_root(p)
    p.add_argument("--pair", help="a zoo pair by name instead of --base/--post (`rwedit zoo` lists them; needs "
                   "the Hub or its weights in the local Hub cache)")
    options.add_set(p)
    options.add_cache_dir(p)
    options.add_quiet(p)


def run(args: argparse.Namespace) -> int:
    from rwedit.apps.kinds import QuickstartOptions, run_quickstart_kind
    from rwedit.apps.quickstart import QuickstartRecipe

    if args.pair:  # a zoo pair: its base and post
        from rwedit.apps.zoo import entry
        from rwedit.errors import ConfigError

        given = [f"--{side}" for side, v in (("base", args.model), ("post", args.post)) if v]
        if given:
            raise ConfigError(f"--pair {args.pair} names a base and a post, and {' and '.join(given)} another: give "
                              f"--pair, or --base/--post, not both")
        pair = entry(args.pair, kind="pair")
        args.model, args.post = pair.base, pair.post
    recipe = QuickstartRecipe.from_yaml(options.recipe_path(args.recipe, "quickstart.yaml"), sets=args.sets)
    result = run_quickstart_kind(recipe, args.out, overrides=QuickstartOptions(
        model=args.model, post=args.post, sft=args.sft, graded=args.graded, reduced=args.reduced, seeds=args.seeds,
        organism_root=args.organism_root))
    print("\n" + "\n".join(result.lines))
    return 0
