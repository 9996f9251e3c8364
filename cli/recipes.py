"""List the recipes shipped with rwedit, with their one-line purpose.

A shipped recipe runs by its name from any folder: `rwedit run control-experiment --base BASE --post POST`.
Copy one (the path is printed) to change it.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--paths", action="store_true", help="print each recipe's installed path too")


def run(args: argparse.Namespace) -> int:
    from rwedit.config import read_yaml
    from rwedit.recipes import purpose, shipped

    recipes = shipped()
    width = max(len(n) for n in recipes)
    for name, path in recipes.items():
        raw = read_yaml(path)
        kind = raw.get("experiment") or ("zoo (rwedit zoo)" if "pairs" in raw else
                                         "edit spec" if name.startswith("edit") else "control")
        line = f"{name:<{width}}  [{kind}]  {purpose(path)}"
        print(line + (f"\n{'':<{width}}  {path}" if args.paths else ""))
    return 0
