"""Refresh an adapter's model card (optionally with metrics) and push it to the Hub.

ADAPTER is a folder written by `rwedit edit` (OUT/adapters/NAME). The model card and rwedit.json are
rewritten, with --metrics attached: the --out folder of `rwedit eval` (or of `rwedit run`), whose row for
this adapter is taken, or a JSON object of metric -> value or {value, stderr}; --push-to-hub
uploads the folder (private unless --public) using your Hugging Face login or HF_TOKEN; the token is never
written anywhere. Offline, the upload fails and the folder is left intact.
"""

from __future__ import annotations

import argparse

from rwedit.cli import options


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("adapter", help="adapter folder")
    p.add_argument("--metrics", help="metrics to put on the card: the --out folder (or results.jsonl) of `rwedit "
                   "eval` or `rwedit run`, whose row for this adapter is taken, or a JSON object of metric -> value")
    options.add_push(p, "adapter folder, as a model repo")


def run(args: argparse.Namespace) -> int:
    from rwedit.config import read_json
    from pathlib import Path

    from rwedit.editor.export import metrics_from_results, push_to_hub, refresh_card

    from rwedit.editor.export import check_repo_id

    if args.push_to_hub:
        check_repo_id(args.push_to_hub)  # before the card is touched
    metrics = None
    if args.metrics:
        src = Path(args.metrics)
        metrics = (metrics_from_results(src, Path(args.adapter).resolve().name)
                   if src.is_dir() or src.suffix == ".jsonl" else read_json(src))
    folder = refresh_card(args.adapter, metrics, repo_id=args.push_to_hub)
    print(f"model card and rwedit.json refreshed in {folder}")
    if args.push_to_hub:
        url = push_to_hub(folder, args.push_to_hub, private=not args.public)
        print(f"uploaded to {args.push_to_hub} ({'public' if args.public else 'private'}): {url}")
    return 0
