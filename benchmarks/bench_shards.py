#!/usr/bin/env python
"""Benchmark a sharded grid: the 12 conditions of the scoring benchmark as one process vs two shard
processes started together (``run_recipe(..., shard=Shard(i, 2))``, what ``rwedit run --shard i/2`` calls).

Usage::

    python benchmarks/bench_shards.py                     # rwedit_blimp, --limit 10, the 12 adapters
    python benchmarks/bench_shards.py --limit 4           # quicker

Target (issue #17): two shards vs one on the 12-condition scoring benchmark, wall ratio <= 0.6x on 2 cores.

What it measures
----------------
The model, tokenizer and 12 adapters are those of ``bench_scoring.py`` (its ``step_setup``: the ~100M random
Llama of ``_common.build_llama_100m`` and the adapters of ``bench_adapters.py``, built once into
``benchmarks/.cache/llama-100m``). A small experiment kind registered here (``bench-adapters``) makes each
saved adapter a condition on one loaded model, scored by ``LMEvalScorer`` on one offline task, so the run
goes through the real runner: ``run_experiment`` with its store, its locks and, for the shards, one store
per shard and the merged report written by the shard that finishes last.  Each configuration runs in fresh
interpreters (imports included, as a user's ``rwedit run`` would), timed from the first spawn to the last
exit:

  one      - one process, all 12 conditions (torch's default threads: one per core);
  two      - two shard processes started at once, torch's default threads each (2 x 2 threads on 2 cores);
  one_1t   - one process with OMP_NUM_THREADS=1;
  two_1t   - two shards with OMP_NUM_THREADS=1 each (what ``torchrun`` sets by default).

The ratios compare like with like (two / one, two_1t / one_1t: the same threads per process); two_1t / one
(torchrun's setting against a plain ``rwedit run``) is recorded beside them. The configurations are run in
turn (one, two, one_1t, two_1t, then again with --repeats), so load changes from other processes hit them alike; each records the load average and how many cores other processes kept busy
meanwhile (``other_procs_cores``). Cross-check: the merged rows of each sharded run equal the unsharded rows
(every metric to 1e-9).  Results go to ``benchmarks/results/shards.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _common import write_results
from _common import LLAMA_100M_CACHE, busy_cpu_s, emit

HERE = Path(__file__).resolve().parent
DEFAULT_RESULTS = HERE / "results" / "shards.json"
TAG = "@@BENCH_SHARDS@@ "
TARGET = 0.6
KIND = "bench-adapters"


# --- the experiment kind: each saved adapter a condition ---------------------------------------


def register_kind():
    """Register ``bench-adapters`` (a recipe: base model, adapter folder, adapter names, eval settings)."""
    from rwedit.config import option
    from rwedit.evals.core import (Condition, ExperimentKind, ExperimentRecipe, Prepared, experiment_kinds,
                                   register_experiment)

    if any(k.name == KIND for k in experiment_kinds()):
        return

    @dataclass(frozen=True)
    class AdapterRecipe(ExperimentRecipe):
        """Saved named adapters on one base model, each scored as a condition."""

        experiment: str = option(KIND, help="this benchmark's kind")
        adapters: str = option("", help="folder of named adapter folders")
        conditions: tuple[str, ...] = option((), help="the adapter names, in scoring order")

    def prepare(recipe, out):
        from rwedit.checkpoints import Checkpoint
        from rwedit.editor.adapters import load_adapter_folder
        from rwedit.editor.interventions import Adapter
        from rwedit.evals.lmeval import LMEvalScorer
        from rwedit.models import load_model_and_tokenizer

        model, tok = load_model_and_tokenizer(Checkpoint.open(recipe.model), device=recipe.device)
        peft_model = load_adapter_folder(model, recipe.adapters, list(recipe.conditions)).eval()
        return Prepared(peft_model, [Condition(n, Adapter(n), {"kind": "adapter"}) for n in recipe.conditions],
                        lambda: [LMEvalScorer(peft_model, tok, recipe.eval)])

    def report(folder):
        from rwedit.evals.store import ResultStore

        path = Path(folder) / "report.md"
        path.write_text(f"{len(ResultStore(folder).rows())} rows\n")
        return path

    register_experiment(ExperimentKind(KIND, AdapterRecipe, help="benchmark: saved adapters as conditions",
                                       prepare=prepare, report=report))


def recipe(p: dict) -> dict:
    return {"experiment": KIND, "name": "bench-shards", "model": p["base"], "adapters": p["adapters"],
            "conditions": p["names"], "eval": {"tasks": [p["task"]], "limit": p["limit"], "batch_size": p["batch_size"]},
            "direct": None}


def child(p: dict) -> None:
    """One process of a configuration: the whole grid, or one shard of it."""
    t0 = time.perf_counter()
    register_kind()
    from rwedit.evals.core import run_recipe
    from rwedit.runtime import using

    imported = time.perf_counter() - t0
    with using(progress=False):
        result = run_recipe(recipe(p), p["out"], shard=p.get("shard"))
    emit(TAG, dict(in_process_s=time.perf_counter() - t0, imports_s=imported, report=str(result.report),
                   lines=result.lines))


# --- the driver ------------------------------------------------------------------------------


def launch(p: dict, shards: list[str | None], threads: int | None) -> dict:
    """Start one process per entry of ``shards`` at once; wall time from the first spawn to the last exit."""
    env = dict(os.environ)
    for k in ("RANK", "WORLD_SIZE", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"):
        env.pop(k, None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    shutil.rmtree(p["out"], ignore_errors=True)
    ru0, busy0, load0 = resource.getrusage(resource.RUSAGE_CHILDREN), busy_cpu_s(), os.getloadavg()
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, __file__, "--child", json.dumps({**p, "shard": s})], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for s in shards]
    outs = [proc.communicate() for proc in procs]
    wall = time.perf_counter() - t0
    ru1, busy1 = resource.getrusage(resource.RUSAGE_CHILDREN), busy_cpu_s()
    reports = []
    for proc, (so, se) in zip(procs, outs):
        tagged = [ln for ln in so.splitlines() if ln.startswith(TAG)]
        if proc.returncode != 0 or not tagged:
            sys.stderr.write(so + se)
            raise SystemExit(f"a process of {shards} failed (exit {proc.returncode})")
        reports.append(json.loads(tagged[-1][len(TAG):]))
    own = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    from rwedit.evals.store import ResultStore

    rows = ResultStore(p["out"]).rows()
    return dict(wall_s=wall, cpu_s=own, other_procs_cores=max(0.0, (busy1 - busy0) - own) / wall,
                loadavg_before=load0, loadavg_after=os.getloadavg(), threads=threads or "default",
                processes=[{"shard": s, **r} for s, r in zip(shards, reports)], rows=rows)


def same_rows(a: list[dict], b: list[dict]) -> float:
    """The largest |difference| of a numeric field between two runs' rows (inf when conditions or keys differ)."""
    if [r["condition"] for r in a] != [r["condition"] for r in b]:
        return float("inf")
    worst = 0.0
    for x, y in zip(a, b):
        keys = set(x) - {"seconds"}
        if keys != set(y) - {"seconds"}:
            return float("inf")
        for k in keys:
            if isinstance(x[k], (int, float)) and isinstance(y[k], (int, float)):
                worst = max(worst, abs(x[k] - y[k]))
            elif isinstance(x[k], list) and isinstance(y[k], list):
                worst = max([worst] + [abs(u - v) for u, v in zip(x[k], y[k]) if isinstance(u, (int, float))])
            elif x[k] != y[k]:
                return float("inf")
    return worst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--task", default="rwedit_blimp")
    ap.add_argument("--limit", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=1, help="rounds of (one, two, one_1t, two_1t)")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "rwedit-bench-shards"), help="scratch folder for the runs")
    ap.add_argument("--results", default=str(DEFAULT_RESULTS))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return 0

    from bench_scoring import step_setup

    t0 = time.perf_counter()
    setup = step_setup({"cache": str(LLAMA_100M_CACHE), "task": args.task, "limit": args.limit,
                        "batch_size": args.batch_size})
    print(f"setup {time.perf_counter() - t0:.1f} s: {len(setup['names'])} conditions, {setup['n_params'] / 1e6:.0f}M "
          f"parameters")
    work = Path(args.work)
    base = dict(base=str(LLAMA_100M_CACHE / "base"), adapters=str(LLAMA_100M_CACHE / "adapters"), names=setup["names"],
                task=args.task, limit=args.limit, batch_size=args.batch_size)
    load_start = os.getloadavg()
    runs: dict[str, list[dict]] = {"one": [], "two": [], "one_1t": [], "two_1t": []}
    for r in range(args.repeats):
        for name, shards, threads in (("one", [None], None), ("two", ["0/2", "1/2"], None),
                                      ("one_1t", [None], 1), ("two_1t", ["0/2", "1/2"], 1)):
            res = launch({**base, "out": str(work / f"{name}-{r}")}, shards, threads)
            runs[name].append(res)
            print(f"  {name:7s} round {r}: {res['wall_s']:6.1f} s wall, {res['cpu_s']:6.1f} s CPU, other processes "
                  f"{res['other_procs_cores']:.2f} cores, load {res['loadavg_after'][0]:.2f}")
    ref = runs["one"][0]["rows"]
    checks = {name: max(same_rows(x["rows"], ref) for x in rs) for name, rs in runs.items()}
    for rs in runs.values():
        for x in rs:
            x["n_rows"] = len(x.pop("rows"))

    def med(name):
        vals = sorted(x["wall_s"] for x in runs[name])
        return vals[len(vals) // 2]

    ratios = {"two_over_one": med("two") / med("one"), "two_1t_over_one_1t": med("two_1t") / med("one_1t"),
              "two_1t_over_one": med("two_1t") / med("one"), "target": TARGET}
    ratios["best_like_for_like"] = min(ratios["two_over_one"], ratios["two_1t_over_one_1t"])
    ratios["met"] = ratios["best_like_for_like"] <= TARGET
    import torch

    out = dict(
        machine=dict(nproc=os.cpu_count(), nproc_usable=len(os.sched_getaffinity(0)), python=platform.python_version(),
                     torch=torch.__version__, torch_threads_default=torch.get_num_threads(),
                     loadavg_start=load_start, loadavg_end=os.getloadavg(),
                     shared_cpu="other engineers' processes shared these cores: other_procs_cores is how many cores "
                                "they kept busy during each configuration on average"),
        settings=dict(task=args.task, limit=args.limit, batch_size=args.batch_size, conditions=len(setup["names"]),
                      repeats=args.repeats, model=setup["model"], n_params=setup["n_params"]),
        runs=runs, ratios=ratios,
        checks={"max_abs_diff_vs_one": checks, "rows_equal": all(v <= 1e-9 for v in checks.values())})
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    write_results(args.results, out)
    print(f"two shards / one process (wall, medians): {ratios['two_over_one']:.2f}x with default threads, "
          f"{ratios['two_1t_over_one_1t']:.2f}x with 1 thread per process, {ratios['two_1t_over_one']:.2f}x for 1-thread "
          f"shards vs a default-threads process (target <= {TARGET}x like for like: "
          f"{'met' if ratios['met'] else 'not met'}); {os.cpu_count()} cores, load average "
          f"{load_start[0]:.2f} -> {os.getloadavg()[0]:.2f}; rows equal: {out['checks']['rows_equal']} -> {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
