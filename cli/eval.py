"""Score a base model and its adapters with lm-eval and the direct metrics.

Loads the model once and scores the base and every adapter in --adapters (one adapter folder, or a folder of
them such as OUT/adapters of `rwedit edit`) by switching adapters in place. Bundled offline tasks:
rwedit_hh_preference, rwedit_blimp, rwedit_wikitext; any registered lm-eval task works when its data can be
downloaded. Writes one JSON line per condition to OUT/results.jsonl as each is scored (without --out: to
standard output); after an interruption (even kill -9) --resume scores only the conditions not stored yet.
`rwedit export ADAPTER --metrics OUT` puts that adapter's row on its card.
"""

from __future__ import annotations

import argparse
import sys

from pathlib import Path

from rwedit.bundled import HH_HELDOUT
from rwedit.cli import options
from rwedit.errors import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.add_model(p, required=True)
    p.add_argument("--adapters", help="an adapter folder, or a folder of adapter folders, to score next to the base")
    p.add_argument("--tasks", default="rwedit_hh_preference,rwedit_blimp,rwedit_wikitext", help="comma list")
    p.add_argument("--limit", type=options.positive_int, help="items per task (default: all)")
    options.add_batch_size(p)
    p.add_argument("--items", type=options.items, default="all", help="held-out preference pairs of the direct "
                   f"metrics, every condition on the same ones: all (default: the {len(HH_HELDOUT)} held-out pairs) "
                   f"or a number")
    p.add_argument("--no-direct", action="store_true", help="skip the direct metrics")
    options.add_out(p, what="output folder: results.jsonl, one row per condition, stored as each is scored",
                    when_omitted="standard output, nothing kept to resume")
    options.add_resume(p)
    options.add_overwrite(p)
    options.add_placement(p)
    options.add_allow_pickle(p)
    options.add_force(p)
    options.add_quiet(p)


def run(args: argparse.Namespace) -> int:
    import shutil

    from rwedit.evals.adapter_eval import KIND, EvalRecipe
    from rwedit.evals.core import run_experiment
    from rwedit.evals.direct import DirectSettings
    from rwedit.evals.lmeval import EvalSettings
    from rwedit.outputs import check_output_folder, dumps

    recipe = EvalRecipe(model=args.model, adapters=args.adapters, force=args.force, device=args.device,
                        placement=options.placement(args),
                        eval=EvalSettings.from_dict({"tasks": [t for t in args.tasks.split(",") if t],
                                                     "limit": args.limit, "batch_size": args.batch_size}, where="eval"),
                        direct=None if args.no_direct else DirectSettings(pairs=args.items))
    out = None if args.out is None else Path(args.out)  # none: rows go to standard output as scored, none kept
    if out is not None:
        if args.resume and args.overwrite:
            raise ConfigError("--resume continues the eval stored in --out, --overwrite replaces it: give one")
        if args.overwrite or not (out / "run.json").exists():  # a stored eval is refused by the store (--resume)
            check_output_folder(out, args.overwrite, inputs=recipe.inputs())  # a file, a folder not rwedit's, an input
        if args.overwrite and out.exists():  # replaced whole, once what would fail has failed
            recipe.check_sources()
            shutil.rmtree(out)

    def show(row: dict) -> None:
        sys.stdout.write(dumps(row) + "\n")
        sys.stdout.flush()

    result = run_experiment(KIND, recipe, out, resume=args.resume, on_row=show if out is None else None)
    if out is not None:
        print(f"wrote {result.report} ({len(result.rows)} rows; `rwedit export ADAPTER --metrics {out}` "
              f"puts an adapter's row on its card)")
    return 0
