"""Rebuild report.md, headline.csv, verdicts.csv and plots of a run.

Reads DIR/results.jsonl and DIR/run.json only; nothing is recomputed. The report is the one of the
experiment kind recorded in DIR/run.json.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="experiment folder written by `rwedit run`")
    p.add_argument("--primary", help="behaviour metric of the verdicts (default: the recipe's primary:)")


def run(args: argparse.Namespace) -> int:
    import rwedit.apps  # noqa: F401  (registers the organism and quickstart kinds)
    from rwedit.evals.core import write_report

    print(f"wrote {write_report(args.folder, primary=args.primary)}")
    return 0
