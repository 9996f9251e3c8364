"""Greedy generation from the base model and from base + adapter, side by side."""

from __future__ import annotations

import argparse

from rwedit.cli import options


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("adapter", help="adapter folder")
    options.add_model(p, when_omitted="the one recorded in the adapter's rwedit.json")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=options.positive_int, default=40)
    options.add_allow_pickle(p)
    options.add_force(p)


def run(args: argparse.Namespace) -> int:
    from rwedit.editor.pipeline import compare_generation

    res = compare_generation(args.adapter, args.model, args.prompt, args.max_new_tokens, force=args.force)
    print(f"prompt: {res['prompt']}\n\n[base]   {res['base']}\n\n[edited] {res['edited']}")
    return 0
