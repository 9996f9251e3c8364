"""Score a base model and its adapters with lm-eval and the direct metrics.

Loads the model once and scores the base and every adapter in --adapters (one adapter folder, or a folder of
them such as OUT/adapters of `rwedit edit`) by switching adapters in place. Bundled offline tasks:
rwedit_hh_preference, rwedit_blimp, rwedit_wikitext; any registered lm-eval task works when its data can be
downloaded. Writes one JSON line per condition to OUT/results.jsonl (default: stdout); `rwedit export ADAPTER
--metrics OUT` puts that adapter's row on its card.
"""

from __future__ import annotations

import argparse
import sys

from rwedit.cli import options
from rwedit.errors import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.add_model(p, required=True)
    p.add_argument("--adapters", help="an adapter folder, or a folder of adapter folders, to score next to the base")
    p.add_argument("--tasks", default="rwedit_hh_preference,rwedit_blimp,rwedit_wikitext", help="comma list")
    p.add_argument("--limit", type=options.positive_int, help="items per task (default: all)")
    options.add_batch_size(p)
    p.add_argument("--items", type=options.items, default="all", help="held-out preference pairs of the direct "
                   "metrics, every condition on the same ones: all (default: the 412 held-out pairs) or a number")
    p.add_argument("--no-direct", action="store_true", help="skip the direct metrics")
    options.add_out(p, what="output folder: results.jsonl, one row per condition", when_omitted="standard output")
    options.add_overwrite(p)
    options.add_placement(p)
    options.add_allow_pickle(p)
    options.add_force(p)
    options.add_quiet(p)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace
    from pathlib import Path

    from rwedit.checkpoints import Checkpoint
    from rwedit.editor.interventions import BASE
    from rwedit.evals.direct import DirectScorer
    from rwedit.evals.core import check_scores
    from rwedit.evals.lmeval import EvalSettings, LMEvalScorer
    from tqdm.auto import tqdm

    from rwedit.models import load_model_and_tokenizer
    from rwedit.outputs import atomic_folder, check_output_folder, dumps, write_json, write_text

    settings = EvalSettings.from_dict({"tasks": [t for t in args.tasks.split(",") if t], "limit": args.limit,
                                       "batch_size": args.batch_size}, where="eval")
    out = check_output_folder(args.out, args.overwrite) if args.out else None  # refused now, not after scoring
    names = []
    root = None
    if args.adapters:
        root = Path(args.adapters)
        if not root.is_dir():
            raise ConfigError(f"--adapters {root}: no such folder (give an adapter folder or the folder that holds "
                              f"adapter folders, e.g. OUT/adapters of `rwedit edit`)")
        if (root / "adapter_config.json").exists():  # one adapter folder
            root, names = root.parent, [root.name]
        else:
            names = sorted(p.name for p in root.iterdir() if (p / "adapter_config.json").exists())
        if not names:
            raise ConfigError(f"--adapters {root} holds no adapter folders (none with adapter_config.json)")
    ckpt = Checkpoint.open(args.model)
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size}: give at least 1")
    model, tok = load_model_and_tokenizer(ckpt, device=args.device, placement=options.placement(args))
    if names:
        from rwedit.editor.adapters import load_adapter_folder

        model = load_adapter_folder(model, root, names, force=args.force)
    lme = LMEvalScorer(model, tok, settings)
    direct = None
    if not args.no_direct:  # the direct metrics' default lengths, shortened to fit the model's window
        from rwedit.evals.direct import DirectSettings
        from rwedit.models import context_window

        d, window = DirectSettings(pairs=args.items), context_window(model)
        if window is not None:
            d = replace(d, seq_len=min(d.seq_len, window), max_len=min(d.max_len, window))
        direct = DirectScorer(model, tok, d, progress=not args.quiet)
    lines, raw = [], {}
    for name in tqdm([BASE] + names, desc="conditions", disable=args.quiet or len(names) == 0):
        row = {"condition": name, **check_scores({**(direct.score(name) if direct else {}), **lme.score(name)}, name)}
        lines.append(dumps(row) + "\n")
        raw[name] = lme.raw
        if out is None:
            sys.stdout.write(lines[-1])
            sys.stdout.flush()
    if out is not None:  # written whole at the end: an interrupted eval leaves no half folder
        with atomic_folder(out, overwrite=args.overwrite) as tmp:
            write_text(tmp / "results.jsonl", "".join(lines))
            (tmp / "raw" / lme.name).mkdir(parents=True)
            for name, r in raw.items():  # lm-eval's own results JSON (configs, versions, samples) per condition
                write_json(tmp / "raw" / lme.name / f"{name}.json", r)
        print(f"wrote {out / 'results.jsonl'} ({len(lines)} rows; `rwedit export ADAPTER --metrics {out}` puts an "
              f"adapter's row on its card)")
    return 0
