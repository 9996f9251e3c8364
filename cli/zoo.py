"""List the zoo: well-known base → post-trained pairs and checkpoint series on the Hub, and which are cached.

Each entry names its Hub ids (with revisions for series), what separates post from base (SFT, DPO, RLVR,
distillation, pretraining steps) and the model card and paper that say so. `cached` tells whether every
checkpoint of the entry is in the local Hub cache, i.e. whether it runs offline. Run one:
`rwedit quickstart --pair NAME`, or give its ids to any command (--base/--post, --series).
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="show one entry in full")


def run(args: argparse.Namespace) -> int:
    from rwedit.apps.zoo import cached, entry, load_zoo

    zoo = {args.name: entry(args.name)} if args.name else load_zoo()
    width = max(len(n) for n in zoo)
    for name, e in zoo.items():
        state = "cached" if all(cached(r) for r in e.refs()) else "not cached"
        what = f"{e.base} -> {e.post}" if e.post else f"{e.base} -> {len(e.members)} checkpoints"
        print(f"{name:<{width}}  [{e.kind}, {state}]  {what}\n{'':<{width}}  {e.separates}" +
              (f"\n{'':<{width}}  {e.source}" + "".join(f"\n{'':<{width}}  member {m}" for m in e.members)
               if args.name else ""))
    return 0
