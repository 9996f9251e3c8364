"""Print the direction cards of a probe or quickstart folder: what each direction is, in words.

Reads OUT/directions.jsonl (and the directions.jsonl of the folders inside OUT, e.g. a quickstart's probe and
its experiment's edit/, whose cards are the edit's v and b and each control's):
for each direction its top calibration contexts of both signs (the token in brackets) and the tokens it
promotes and suppresses through the unembedding. By default the headline cells: the first direction of each
kind on the roles the read/write claims rest on (q, o, down) and the prediction subspace.
"""

from __future__ import annotations

import argparse

from rwedit.cli import options


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="a folder rwedit probe or quickstart wrote (with directions.jsonl)")
    p.add_argument("--show-roles", default="q,o,down,unembed", help="comma list of roles to show (default: "
                   "q,o,down,unembed, the cells of the read/write claims); 'all' for every role")
    p.add_argument("--show-layers", help="comma list of layers to show (default: all)")
    p.add_argument("--kinds", help="comma list of kinds: activation, delta_right, delta_left, prediction, edit_v, "
                   "edit_b (default: all)")
    p.add_argument("--top", type=options.positive_int, default=1, help="directions per cell and kind (default 1)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rwedit.errors import DataError
    from rwedit.probes.directions import card_lines, read_cards

    root = Path(args.folder)
    files = sorted(p for pattern in ("directions.jsonl", "*/directions.jsonl", "*/*/directions.jsonl")
                   for p in root.glob(pattern))
    if not files:
        raise DataError(f"{root}: no directions.jsonl here or below; run `rwedit probe ... --out {root}` with "
                        f"direction cards on (--cards 4, the default)")
    roles = None if args.show_roles == "all" else set(args.show_roles.split(","))
    layers = None if not args.show_layers else {int(x) for x in args.show_layers.split(",")}
    kinds = None if not args.kinds else set(args.kinds.split(","))
    for path in files:
        rows = read_cards(path)
        shown = [r for r in rows if (roles is None or r["role"] in roles) and r["index"] < args.top
                 and (layers is None or r["layer"] in layers or r["layer"] is None) and (kinds is None or r["kind"] in kinds)]
        print(f"== {path.parent} ({len(shown)} of {len(rows)} directions)")
        for r in shown:
            print("\n".join(card_lines(r)))
    return 0
