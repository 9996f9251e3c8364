"""Publish a run's tables as a Hugging Face dataset (a local folder, or the Hub with --push-to-hub).

RUN_DIR is any folder rwedit wrote (`rwedit run`, `probe`, `svd`, `eval`, `quickstart`). Its tables (the
experiment's rows with their per-item values, verdicts, headline, replicate units; RSF grids; SVD metrics)
become data/NAME.jsonl plus a dataset card naming what was compared, the settings, the rwedit version and the
adapters; `datasets.load_dataset(OUT, NAME)` loads one. The run's reports (report.html / summary.html,
self-contained, with their Markdown and figures) travel with it under reports/. --push-to-hub uploads the folder as a dataset repo
(private unless --public); offline the folder is written and the message says how to push it later.
"""

from __future__ import annotations

import argparse

from rwedit.cli import options

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a folder rwedit wrote (run, probe, svd, eval or quickstart output)")
    options.add_out(p, required=True, what="output folder: the dataset (data/NAME.jsonl and README.md)")
    options.add_overwrite(p)
    p.add_argument("--allow-partial", action="store_true", help="export a run that is not finished (conditions or "
                   "shards missing); the card's first line and a missing_conditions column say what is missing")
    options.add_push(p, "dataset folder, as a dataset repo")


def run(args: argparse.Namespace) -> int:
    from rwedit.apps.results import collect_tables, export_results

    out = export_results(args.run_dir, args.out, overwrite=args.overwrite, repo_id=args.push_to_hub,
                         private=not args.public, allow_partial=args.allow_partial)
    names = [t.name for t in collect_tables(args.run_dir)]
    print(f"wrote {out} ({len(names)} tables: {', '.join(names)}); load one with "
          f"datasets.load_dataset({str(out)!r}, {names[0]!r})")
    if args.push_to_hub:
        print(f"uploaded to the Hub dataset {args.push_to_hub} ({'public' if args.public else 'private'})")
    else:
        print(f"to publish it: rwedit export-results {args.run_dir} --out {out} --overwrite --push-to-hub org/name")
    return 0
