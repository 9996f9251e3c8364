"""List the lm-eval tasks bundled with rwedit (offline data), or print their folder for lm-eval.

The same folder serves plain lm-eval, from any working directory:
`lm_eval --model hf --model_args pretrained=BASE --include_path $(rwedit tasks --path) --tasks rwedit_blimp`.
The tasks read the real data shipped with rwedit through lm-eval's custom_dataset hook.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--path", action="store_true", help="print only the tasks folder (for lm_eval --include_path)")


def run(args: argparse.Namespace) -> int:
    from rwedit.evals.tasks import BUNDLED_TASKS, task_path

    if args.path:
        print(task_path())
        return 0
    width = max(len(n) for n in BUNDLED_TASKS)
    for name, what in BUNDLED_TASKS.items():
        print(f"{name:<{width}}  {what}")
    print(f"\nfolder: {task_path()}\n(lm_eval --include_path \"$(rwedit tasks --path)\" --tasks NAME)")
    return 0
