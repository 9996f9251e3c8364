"""Rebuild report.md (and the self-contained report.html), headline.csv, verdicts.csv and plots of a run;
--open shows report.html in the browser.

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
    p.add_argument("--open", action="store_true", help="open report.html in the browser (where there is a display)")


def run(args: argparse.Namespace) -> int:
    import rwedit.apps  # noqa: F401  (registers the organism and quickstart kinds)
    import sys

    from rwedit.evals.core import shard_problems, share_note, write_report
    from rwedit.pages import open_in_browser

    path = write_report(args.folder, primary=args.primary)
    note = share_note(args.folder)  # the folder is one shard's: its report is of that share only
    for line in shard_problems(args.folder):
        print(f"{'note' if line == note else 'unfinished'}: {line}", file=sys.stderr)
    page = path.with_suffix(".html")
    print(f"wrote {path}" + (f" and {page}" if page.exists() else ""))
    if args.open:
        print(open_in_browser(page) if page.exists() else f"{args.folder}: this kind's report has no page to open")
    return 0
