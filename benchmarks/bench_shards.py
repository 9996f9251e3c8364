#!/usr/bin/env python
"""Benchmark a sharded grid: the 12 conditions of the scoring benchmark as one process vs two shard
processes started together (``run_recipe(..., shard=Shard(i, 2))``, what ``rwedit run --shard i/2`` calls), at
one or several grid sizes (items scored per condition), to find the size from which sharding pays.

Usage::

    python benchmarks/bench_shards.py                          # rwedit_blimp, --limit 10, the 12 adapters
    python benchmarks/bench_shards.py --limit 10,40,160,320    # a sweep: start-up dominates, then scoring
    python benchmarks/bench_shards.py --limit 4 --conditions 4 --configs one,two_1t   # quicker

Target (issues #17, #28.6): two shards vs one, wall ratio <= 0.6x on 2 cores like for like, on a grid whose
scoring dominates (the largest --limit's figures go to summary.md); the sweep states the size from which two
processes beat one (ratio < 1) and meet the target, measured or extrapolated from the largest size (start-up S
and scoring W of each process: ratio(W) = (S2 + a W) / (S1 + W), ``crossover`` in the results).

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

  one      - one process, all the conditions (torch's default threads: one per core);
  two      - two shard processes started at once, torch's default threads each (2 x 2 threads on 2 cores);
  one_1t   - one process with OMP_NUM_THREADS=1;
  two_1t   - two shards with OMP_NUM_THREADS=1 each (what ``torchrun`` sets by default).

The ratios compare like with like (two / one, two_1t / one_1t: the same threads per process); two_1t / one
(torchrun's setting against a plain ``rwedit run``) is recorded beside them. The configurations are run in
turn at each size (one, two, one_1t, two_1t, then again with --repeats), so load changes from other processes
hit them alike; each records the load average, how many cores other processes kept busy meanwhile
(``other_procs_cores``) and its scoring seconds (the stored rows'). Cross-check: the merged rows of each sharded run equal the unsharded rows
(every metric to 1e-9).  Results go to ``benchmarks/results/shards.json``.
"""

from __future__ import annotations

import argparse
import json
import math
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


CONFIGS = {"one": ([None], None), "two": (["0/2", "1/2"], None), "one_1t": ([None], 1), "two_1t": (["0/2", "1/2"], 1)}


def measure_size(base: dict, limit: int, configs: list[str], repeats: int, work: Path) -> dict:
    """The configurations at one ``limit`` (items per condition), in turn, ``repeats`` rounds: walls, ratios and
    how much of a process's life is scoring (the stored rows' seconds)."""
    runs: dict[str, list[dict]] = {name: [] for name in configs}
    for r in range(repeats):
        for name in configs:
            shards, threads = CONFIGS[name]
            res = launch({**base, "limit": limit, "out": str(work / f"{name}-{limit}-{r}")}, shards, threads)
            res["scoring_s"] = sum(row.get("seconds", 0) for row in res["rows"])
            runs[name].append(res)
            print(f"  limit {limit:4d} {name:7s} round {r}: {res['wall_s']:6.1f} s wall ({res['scoring_s']:6.1f} s "
                  f"scoring), {res['cpu_s']:6.1f} s CPU, other processes {res['other_procs_cores']:.2f} cores, load "
                  f"{res['loadavg_after'][0]:.2f}", flush=True)
    ref = runs[configs[0]][0]["rows"]
    checks = {name: max(same_rows(x["rows"], ref) for x in rs) for name, rs in runs.items()}
    for rs in runs.values():
        for x in rs:
            x["n_rows"] = len(x.pop("rows"))

    def med(name, key="wall_s"):
        vals = sorted(x[key] for x in runs[name])
        return vals[len(vals) // 2] if vals else None

    def ratio(a, b):
        return med(a) / med(b) if a in runs and b in runs else None

    ratios = {"two_over_one": ratio("two", "one"), "two_1t_over_one_1t": ratio("two_1t", "one_1t"),
              "two_1t_over_one": ratio("two_1t", "one"), "target": TARGET}
    like = [x for x in (ratios["two_over_one"], ratios["two_1t_over_one_1t"]) if x is not None]
    ratios["best_like_for_like"] = min(like) if like else None
    ratios["met"] = ratios["best_like_for_like"] is not None and ratios["best_like_for_like"] <= TARGET
    one = configs[0]
    return dict(limit=limit, runs=runs, ratios=ratios, scoring_share=med(one, "scoring_s") / med(one),
                checks={"max_abs_diff": checks, "rows_equal": all(v <= 1e-9 for v in checks.values())})


def crossover(sizes: list[dict]) -> dict:
    """Where two shard processes beat one (ratio < 1) and where they meet the target (<= 0.6), like for like:
    the smallest measured limit, else extrapolated from the largest one. There a process's wall is start-up S
    (imports, model, adapters: wall minus scoring) plus scoring W; sharded, W splits at a measured speed-up, so
    ratio(W) = (S2 + a W) / (S1 + W) and the target holds from W = (S2 - 0.6 S1) / (0.6 - a) (a >= 0.6: never)."""
    out = {}
    for pair in (("two", "one"), ("two_1t", "one_1t")):
        key = f"{pair[0]}_over_{pair[1]}"
        hit = {t: next((s["limit"] for s in sizes if (s["ratios"].get(key) or 9) <= t), None) for t in (1.0, TARGET)}
        big = sizes[-1]["runs"]
        if pair[0] not in big or pair[1] not in big:
            continue
        a1, a2 = big[pair[1]][0], big[pair[0]][0]
        s1, w1 = a1["wall_s"] - a1["scoring_s"], a1["scoring_s"]
        s2, a = a2["wall_s"] - a2["scoring_s"] / 2, (a2["scoring_s"] / 2) / max(w1, 1e-9)  # a shard's share
        need = (s2 - TARGET * s1) / (TARGET - a) if a < TARGET else None
        out[key] = dict(limit_below_1=hit[1.0], limit_at_target=hit[TARGET], startup_one_s=s1, startup_two_s=s2,
                        shard_scoring_fraction=a, scoring_s_needed_for_target=need,
                        limit_needed_for_target=None if need is None else math.ceil(sizes[-1]["limit"] * need / w1))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--task", default="rwedit_blimp")
    ap.add_argument("--limit", default="10", help="items per condition, or a comma list of sizes to sweep (the "
                    "figures of summary.md are the largest's)")
    ap.add_argument("--conditions", type=int, default=12, help="the first N of the 12 adapters")
    ap.add_argument("--configs", default="one,two,one_1t,two_1t", help="which configurations (first: the reference)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=1, help="rounds of the configurations at each size")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "rwedit-bench-shards"), help="scratch folder for the runs")
    ap.add_argument("--results", default=str(DEFAULT_RESULTS))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return 0

    from bench_scoring import step_setup

    limits = sorted(int(x) for x in args.limit.split(","))
    configs = args.configs.split(",")
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        ap.error(f"unknown configuration(s) {unknown}; choose from {', '.join(CONFIGS)}")
    t0 = time.perf_counter()
    setup = step_setup({"cache": str(LLAMA_100M_CACHE), "task": args.task, "limit": limits[0],
                        "batch_size": args.batch_size})
    names = setup["names"][:args.conditions]
    print(f"setup {time.perf_counter() - t0:.1f} s: {len(names)} conditions, {setup['n_params'] / 1e6:.0f}M parameters")
    base = dict(base=str(LLAMA_100M_CACHE / "base"), adapters=str(LLAMA_100M_CACHE / "adapters"), names=names,
                task=args.task, batch_size=args.batch_size)
    load_start = os.getloadavg()
    sizes = [measure_size(base, limit, configs, args.repeats, Path(args.work)) for limit in limits]
    import torch

    top = sizes[-1]
    out = dict(
        machine=dict(nproc=os.cpu_count(), nproc_usable=len(os.sched_getaffinity(0)), python=platform.python_version(),
                     torch=torch.__version__, torch_threads_default=torch.get_num_threads(),
                     loadavg_start=load_start, loadavg_end=os.getloadavg(),
                     shared_cpu="other engineers' processes shared these cores: other_procs_cores is how many cores "
                                "they kept busy during each configuration on average"),
        settings=dict(task=args.task, limits=limits, batch_size=args.batch_size, conditions=len(names),
                      repeats=args.repeats, configs=configs, model=setup["model"], n_params=setup["n_params"]),
        sizes=sizes, runs=top["runs"], ratios=top["ratios"], crossover=crossover(sizes),
        checks={"max_abs_diff_vs_one": top["checks"]["max_abs_diff"],
                "rows_equal": all(s["checks"]["rows_equal"] for s in sizes)})
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    write_results(args.results, out)
    for s in sizes:
        r = s["ratios"]
        print(f"limit {s['limit']}: scoring {s['scoring_share']:.0%} of the one-process wall; two shards / one "
              f"(medians) {r['two_over_one'] or float('nan'):.2f}x default threads, {r['two_1t_over_one_1t'] or float('nan'):.2f}x "
              f"1 thread per process (target <= {TARGET}x like for like: {'met' if r['met'] else 'not met'})")
    for key, c in out["crossover"].items():
        print(f"{key}: below 1 from limit {c['limit_below_1']}, at the target from limit {c['limit_at_target']} "
              f"(extrapolated: {c['limit_needed_for_target']}); start-up {c['startup_one_s']:.1f} s one, "
              f"{c['startup_two_s']:.1f} s a shard; a shard scores at {c['shard_scoring_fraction']:.2f} of one's time")
    print(f"{os.cpu_count()} cores, load average {load_start[0]:.2f} -> {os.getloadavg()[0]:.2f}; rows equal: "
          f"{out['checks']['rows_equal']} -> {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
