"""Score a base model and its adapters with lm-eval and the direct metrics.

Loads the model once and scores the base and every adapter in --adapters (a folder of adapter folders, e.g.
OUT/adapters of `rwedit edit`) by switching adapters in place. Bundled offline tasks: rwedit_hh_preference,
rwedit_blimp, rwedit_wikitext; any registered lm-eval task works when its data can be downloaded. Writes one
JSON line per condition to --out (default: stdout).
"""

from __future__ import annotations

import argparse
import sys

from rwedit.cli import options


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.add_model(p, required=True)
    p.add_argument("--adapters", help="folder of adapter folders to score next to the base")
    p.add_argument("--tasks", default="rwedit_hh_preference,rwedit_blimp,rwedit_wikitext", help="comma list")
    p.add_argument("--limit", type=int, help="items per task (default: all)")
    options.add_batch_size(p)
    p.add_argument("--no-direct", action="store_true", help="skip the direct metrics")
    options.add_out(p, what="JSONL output file", when_omitted="standard output")
    options.add_device(p)
    options.add_allow_pickle(p)
    options.add_force(p)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from rwedit.checkpoints import Checkpoint
    from rwedit.editor.interventions import BASE
    from rwedit.evals.direct import DirectScorer
    from rwedit.evals.lmeval import EvalSettings, LMEvalScorer
    from rwedit.models import load_model_and_tokenizer

    settings = EvalSettings(tasks=tuple(t for t in args.tasks.split(",") if t), limit=args.limit,
                            batch_size=args.batch_size)
    model, tok = load_model_and_tokenizer(Checkpoint.open(args.model), device=args.device)
    names = []
    if args.adapters:
        from rwedit.editor.adapters import load_adapter_folder

        root = Path(args.adapters)
        names = sorted(p.name for p in root.iterdir() if (p / "adapter_config.json").exists())
        if not names:
            raise ValueError(f"{root} holds no adapter folders (none with adapter_config.json)")
        model = load_adapter_folder(model, root, names, force=args.force)
    lme = LMEvalScorer(model, tok, settings)
    direct = None if args.no_direct else DirectScorer(model, tok)
    sink = open(args.out, "w") if args.out else sys.stdout
    try:
        for name in [BASE] + names:
            row = {"condition": name, **(direct.score(name) if direct else {}), **lme.score(name)}
            sink.write(json.dumps(row) + "\n")
            sink.flush()
    finally:
        if args.out:
            sink.close()
    return 0
