"""Rebuild report.md, headline.csv, verdicts.csv and plots of a run.

Reads DIR/results.jsonl and DIR/run.json only; nothing is recomputed. The report is the one of the
experiment kind recorded in DIR/run.json. A run split with `rwedit run --shard I/N` is merged from
DIR/shards/*/: shards of another recipe, or a condition stored twice, are refused by name, and a shard that
is missing or incomplete is named with the command that finishes it.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="experiment folder written by `rwedit run` (with or without --shard)")
    p.add_argument("--primary", help="behaviour metric of the verdicts (default: the recipe's primary:)")


def run(args: argparse.Namespace) -> int:
    import rwedit.apps  # noqa: F401  (registers the organism and quickstart kinds)
    import sys

    from rwedit.evals.core import shard_problems, share_note, write_report

    path = write_report(args.folder, primary=args.primary)
    note = share_note(args.folder)  # the folder is one shard's: its report is of that share only
    for line in shard_problems(args.folder):
        print(f"{'note' if line == note else 'unfinished'}: {line}", file=sys.stderr)
    print(f"wrote {path}")
    return 0
