"""List the lm-eval tasks bundled with rwedit (offline data), or print their folder for lm-eval; list the
lm-eval backends a recipe's ``eval.backend`` can name.

The same folder serves plain lm-eval, from any working directory:
`lm_eval --model hf --model_args pretrained=BASE --include_path $(rwedit tasks --path) --tasks rwedit_blimp`.
The tasks read the real data shipped with rwedit through lm-eval's custom_dataset hook.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--path", action="store_true", help="print only the tasks folder (for lm_eval --include_path)")
    p.add_argument("--backends", action="store_true",
                   help="list the lm-eval backends a recipe's eval.backend can name (inprocess, hf, vllm) and "
                        "whether each is installed")


def run(args: argparse.Namespace) -> int:
    from rwedit.evals.bundled_tasks import BUNDLED_TASKS, task_path

    if args.path:
        print(task_path())
        return 0
    if args.backends:
        from rwedit.errors import ConfigError
        from rwedit.evals.lmeval import backends

        rows = []
        for b in backends():
            try:
                b.check_installed()
                state = "installed"
            except ConfigError:
                state = f"needs: {b.requires[1]}"
            rows.append((b.name, b.help, state))
        width = max(len(r[0]) for r in rows)
        for name, what, state in rows:
            print(f"{name:<{width}}  {what} [{state}]")
        print("\n(recipe: eval: {backend: hf, model_args: {dtype: bfloat16}}; any other lm-eval model name scores "
              "the base only)")
        return 0
    width = max(len(n) for n in BUNDLED_TASKS)
    for name, what in BUNDLED_TASKS.items():
        print(f"{name:<{width}}  {what}")
    print(f"\nfolder: {task_path()}\n(lm_eval --include_path \"$(rwedit tasks --path)\" --tasks NAME)")
    return 0
