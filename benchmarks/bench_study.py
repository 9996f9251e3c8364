#!/usr/bin/env python
"""Benchmark the whole study at real size: ``rwedit run`` of the control-experiment recipe on a pair with
Qwen2.5-0.5B's shapes, with the settings a laptop user would pick, against the compute it cannot avoid.

Usage::

    python benchmarks/bench_study.py            # 24 layers, vocabulary 151936 (see the module's end for the time)
    python benchmarks/bench_study.py --quick    # 2 layers, vocabulary 32000, fewer conditions and items
    python benchmarks/bench_study.py --quick --intermediate 1024   # quicker still (debugging the benchmark)

Targets (issue #28.4): the whole run <= 1.5x the sum of its stages' irreducible costs; its peak RSS <= 2x the
model's float32 size; ``rwedit plan``'s estimate of each stage within 25% of the measured time.

The pair
--------
``Qwen2Config`` with Qwen2.5-0.5B's shapes: d 896, 24 layers, 14 query and 2 key-value heads, MLP 4864, tied
embeddings, vocabulary 151936 (494M parameters), random (transformers' initialisation, seed 0) and saved in
bfloat16 with ``save_pretrained``. The post is the base plus, on every role matrix of every layer and the (tied)
embedding, a planted rank-8 update of 10% of the matrix's Frobenius norm and Gaussian noise of 1% of it. The
tokenizer is ``bench_scoring``'s byte-level BPE (32000 tokens, trained on the bundled WikiText-2 validation
text: its ids lie inside the model's vocabulary). Built once into ``benchmarks/.cache/study-*``.

The laptop settings (:data:`LAPTOP`, as ``--set`` overrides of ``recipes/control-experiment.yaml``): calibration
8192 tokens (sequences of 256) for the probe's and the edit's statistics; the edit at α 1 and 4 with 2 random
controls, the low-variance one and the write-pathway one (10 conditions and the base); lm-eval on the bundled
hh-rlhf preference and BLiMP tasks, 16 items each; direct metrics on 16 held-out pairs and 8 texts of 128 tokens;
probe k 1, 4, 16, 64 with the exact null (the recipe's). Every process has this machine's cores (torch's default
threads); the activation-statistics cache starts empty, so every stage runs.

Steps, each a fresh process
---------------------------
1. ``bare``: the base loaded as the run loads it (float32, ``load_model_and_tokenizer``), then forward passes of
   8 x 256 random token ids for at least 20 s (10 with --quick): its tokens/s. The driver then reads the pair's
   files twice and times the second (warm) read.
2. ``plan``: ``plan_recipe`` of the same command: each planned stage's estimate at the rates it measures.
3. ``run``: ``python -m rwedit run recipes/control-experiment.yaml --base --post --out --cache-dir --quiet --set
   ...``: its wall and CPU time and peak RSS (``os.wait4``: this process's own), and its ``timings.json`` (each
   stage's wall and CPU time, forward tokens counted at the input embedding and logits at the unembedding, peak
   RSS).

The irreducible cost of a stage: its forward passes at the bare model's measured rates (its tokens through the
model's body, the positions whose logits it computed through the unembedding: a pass run for its hooks, or for
an lm-eval continuation, computes fewer logits than tokens; each rate from the bare passes with and without
logits); for the grid one warm read of
the pair, for loading the model one warm read of the base; the whole run's is the sum over its stages (every
token it ran, the grid's read, one model load). Results: ``benchmarks/results/study.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import add_child_options, child_cmd, emit, measured, run_child, write_results

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "study.json"
TAG = "@@BENCH_STUDY@@ "
RECIPE = ROOT / "recipes" / "control-experiment.yaml"
TARGETS = dict(run_over_irreducible=1.5, peak_rss_over_fp32=2.0, plan_error=0.25)

#: Qwen2.5-0.5B's shapes (vocabulary and layers replaced in --quick)
QWEN_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, tie_word_embeddings=True)
PLANT_RANK, PLANT_REL, NOISE_REL = 8, 0.10, 0.01
#: what a laptop user sets (`rwedit run ... --set KEY=VALUE`), and the quick check's smaller settings
LAPTOP = {"edit.calibration.tokens": 8192, "edit.alpha": [1.0, 4.0], "edit.controls.random": 2,
          "eval.tasks": ["rwedit_hh_preference", "rwedit_blimp"], "eval.limit": 16, "direct.pairs": 16,
          "direct.texts": 8, "export": ["principal0_a4"]}
QUICK = {"edit.calibration.tokens": 1024, "edit.alpha": [1.0], "edit.controls.random": 1,
         "eval.tasks": ["rwedit_blimp"], "eval.limit": 4, "direct.pairs": 4, "direct.texts": 2,
         "export": ["principal0_a1"]}


# --- the pair ----------------------------------------------------------------------------------


def step_build(p: dict) -> dict:
    """The random base in bfloat16 and base + planted low-rank update + noise on every role, with the tokenizer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from bench_scoring import ensure_tokenizer
    from rwedit.architectures import model_layout

    cache = Path(p["cache"])
    torch.manual_seed(0)
    cfg = Qwen2Config(**p["config"], bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = Qwen2ForCausalLM(cfg).to(torch.bfloat16).eval()
    model.save_pretrained(cache / "base")
    tok = ensure_tokenizer(cache / "base")
    layout, g = model_layout(model), torch.Generator().manual_seed(1)
    with torch.no_grad():
        for view in layout.views():
            w = model.get_submodule(view.module).weight  # the unembedding's is the tied embedding's
            w32 = w.float()
            u = torch.randn(w32.shape[0], PLANT_RANK, generator=g)
            v = torch.randn(PLANT_RANK, w32.shape[1], generator=g)
            lr = u @ v
            noise = torch.randn(w32.shape, generator=g)
            w32 += lr * (PLANT_REL * w32.norm() / lr.norm()) + noise * (NOISE_REL * w32.norm() / noise.norm())
            w.copy_(w32)
    model.save_pretrained(cache / "post")
    for f in (cache / "base").glob("tokenizer*"):
        shutil.copy(f, cache / "post" / f.name)
    n = sum(t.numel() for t in model.parameters())
    (cache / "built.json").write_text(json.dumps({"n_params": n, "tokenizer": tok}))
    return {"n_params": n}


def pair_cache(config: dict) -> Path:
    tag = f"L{config['num_hidden_layers']}-V{config['vocab_size']}-F{config['intermediate_size']}"
    return HERE / ".cache" / f"study-{tag}"


# --- the baselines ---------------------------------------------------------------------------------


def step_bare(p: dict) -> dict:
    """Tokens/s of the bare base as the run loads it, over 8 x 256 random ids for at least ``seconds``."""
    import torch

    from rwedit.checkpoints import Checkpoint
    from rwedit.models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(Checkpoint.open(p["base"]))
    ids = torch.randint(3, len(tok), (8, 256), generator=torch.Generator().manual_seed(0))

    def passes(**kw):
        n, t0 = 0, time.perf_counter()
        with torch.no_grad():
            model(ids, **kw)  # warm-up
            t0 = time.perf_counter()
            while n == 0 or time.perf_counter() - t0 < p["seconds"]:
                model(ids, **kw)
                n += ids.numel()
        return n / (time.perf_counter() - t0)

    tps, fig = measured(passes)
    body = passes(logits_to_keep=1)  # the same passes computing one position's logits: the unembedding's share
    return {"tokens_per_s": tps, "body_tokens_per_s": body, "threads": torch.get_num_threads(), **fig,
            **statistics_rates(model.config)}


def statistics_rates(config) -> dict:
    """What the activation statistics cannot avoid on this machine, for the widest and the narrowest hooked input
    (the MLP's and the residual stream's width): the float32 GEMM rate of a aᵀ over 1024 tokens, and one
    decomposition of a d × d second moment keeping the eigenvectors a probe keeps (every eigenvalue, the top and
    bottom SPECTRUM_KEEP; LAPACK's reduction to tridiagonal form, ~(4/3)d³ memory-bound flops, is most of it)."""
    import torch

    from rwedit.probes.activations import SPECTRUM_KEEP
    from rwedit.probes.subspaces import _spectrum_of_symmetric

    gen = torch.Generator().manual_seed(0)
    out = {"gemm_macs_per_s": {}, "decomposition_s": {}}
    for d in sorted({config.hidden_size, config.intermediate_size}):
        x = torch.randn(1024, d, generator=gen)
        x.T @ x
        t0, n = time.perf_counter(), 0
        while n == 0 or time.perf_counter() - t0 < 2.0:
            x.T @ x
            n += 1
        out["gemm_macs_per_s"][d] = n * 1024 * d * d / (time.perf_counter() - t0)
        a = torch.randn(2 * d, d, generator=gen, dtype=torch.float64) * torch.logspace(0, -3, d, dtype=torch.float64)
        m = a.T @ a
        t0 = time.perf_counter()
        _spectrum_of_symmetric(m, SPECTRUM_KEEP)
        out["decomposition_s"][d] = time.perf_counter() - t0
    return out


def step_plan(p: dict) -> dict:
    """``rwedit plan``'s estimate of each stage (and scorer) of the same command."""
    from rwedit.apps.plan import plan_recipe

    plan = plan_recipe(p["recipe"], {"model": p["base"], "post": p["post"]}, p["sets"], p["out"], p["cache_dir"])
    import dataclasses

    rates = plan.rates(cached=False)  # measured now, on the machine the run is timed on
    return {"estimates": plan.estimates(), "rates": dataclasses.asdict(rates), "token_flops": plan.token_flops,
            "stage_tokens": {s.name: s.tokens for s in plan.stages}, "lines": plan.lines()}


def warm_read_s(folder: Path) -> tuple[float, int]:
    """Seconds of one warm read of a checkpoint's weight files (the second of two reads) and their bytes."""
    files = sorted(folder.glob("*.safetensors"))
    for _ in range(2):
        t0, n = time.perf_counter(), 0
        for f in files:
            with open(f, "rb", buffering=0) as h:
                while chunk := h.read(16 << 20):
                    n += len(chunk)
        dt = time.perf_counter() - t0
    return dt, n


def run_study(base: Path, post: Path, sets: list[str], out: Path, cache_dir: Path) -> dict:
    """The whole study as a user runs it: wall, CPU and peak RSS of that process alone, and its timings.json."""
    cmd = [sys.executable, "-m", "rwedit", "run", str(RECIPE), "--base", str(base), "--post", str(post), "--out",
           str(out), "--cache-dir", str(cache_dir), "--quiet"] + [a for s in sets for a in ("--set", s)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=tempfile.gettempdir(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    text = proc.stdout.read()
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.stderr.write(text[-5000:])
        raise SystemExit(f"rwedit run failed (exit {os.waitstatus_to_exitcode(status)})")
    return {"command": " ".join(cmd), "wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime,
            "peak_rss_mib": ru.ru_maxrss / 1024, "stages": json.loads((out / "timings.json").read_text()),
            "tail": text[-3000:]}


# --- the figures -----------------------------------------------------------------------------------


def statistics_floor(cache_dir: Path, bare: dict) -> dict:
    """The compute the run's activation statistics cannot avoid here, from what they hold (each cache entry the run
    wrote: its tokens and every d × d sum, read from the safetensors header): a aᵀ's upper triangle per token at the
    measured GEMM rate of that width, and one decomposition per sum at the measured time for that width (scaled as
    d³ from the nearest measured width where another one occurs)."""
    from safetensors import safe_open

    rates = {int(k): v for k, v in bare["gemm_macs_per_s"].items()}
    eig = {int(k): v for k, v in bare["decomposition_s"].items()}
    near = lambda table, d: min(table, key=lambda w: abs(w - d))  # noqa: E731
    hooks_s = eig_s = 0.0
    entries = []
    for folder in sorted(p for p in cache_dir.glob("*") if (p / "stats.json").exists()):
        n_tokens = json.loads((folder / "stats.json").read_text())["n_tokens"]
        with safe_open(folder / "stats.safetensors", framework="np") as f:  # the header only: no tensor is read
            dims = [f.get_slice(k).get_shape()[0] for k in f.keys() if k.endswith(".sum_aaT")]
        h = sum(n_tokens * d * (d + 1) / 2 / rates[near(rates, d)] for d in dims)
        e = sum(eig[near(eig, d)] * (d / near(eig, d)) ** 3 for d in dims)
        entries.append({"folder": folder.name, "tokens": n_tokens, "sums": len(dims), "hooks_s": h, "decompositions_s": e,
                        "accumulator_bytes": sum(8 * d * (d + 1) // 2 for d in dims)})
        hooks_s, eig_s = hooks_s + h, eig_s + e
    # one pass over the tokens holds every hooked input's float64 sum at once (its upper triangle at the least)
    return {"hooks_s": hooks_s, "decompositions_s": eig_s, "entries": entries,
            "accumulator_bytes": max((e["accumulator_bytes"] for e in entries), default=0)}


def figures(bare: dict, plan: dict, run: dict, pair_read_s: float, base_read_s: float, n_params: int,
            stats_floor: dict) -> dict:
    """Per stage: measured, irreducible and planned seconds; the whole run's ratios (against the forward passes
    alone, the issue's irreducible; and against the floor that adds the statistics' products and decompositions)."""
    tps, stages, est = bare["tokens_per_s"], run["stages"], plan["estimates"]
    # a token's pass without logits, and one position's logits (measured: the bare passes with and without them)
    body_s = 1 / bare.get("body_tokens_per_s", tps)
    head_s = 1 / tps - body_s

    def passes_s(st: dict) -> float:
        return st["tokens"] * body_s + st.get("logits", st["tokens"]) * head_s

    rows = {}
    for name, st in stages.items():
        irreducible = passes_s(st) + {"probe: RSF grid": pair_read_s, "load model": base_read_s}.get(name, 0.0)
        rows[name] = dict(**st, irreducible_s=irreducible, over_irreducible=st["wall_s"] / irreducible
                          if irreducible else None, plan_s=est.get(name),
                          plan_over_measured=est[name] / st["wall_s"] if name in est and st["wall_s"] else None)
    total_irr = passes_s(stages["run"]) + pair_read_s + base_read_s
    planned = [r["plan_over_measured"] for r in rows.values() if r["plan_over_measured"] is not None]
    floor = total_irr + stats_floor["hooks_s"] + stats_floor["decompositions_s"]
    return dict(stages=rows, irreducible_s=total_irr, run_over_irreducible=run["wall_s"] / total_irr,
                statistics_floor=stats_floor, floor_with_statistics_s=floor, run_over_floor=run["wall_s"] / floor,
                peak_rss_over_fp32=run["peak_rss_mib"] * 2**20 / (4 * n_params),
                plan_error=max(abs(x - 1) for x in planned) if planned else None,
                plan_total_over_measured=sum(est[s] for s in plan["stage_tokens"]) / stages["run"]["wall_s"])


def table(fig: dict) -> str:
    lines = [f"{'stage':<22} {'wall s':>8} {'tokens':>9} {'peak MiB':>9} {'irred. s':>9} {'x irred.':>9} "
             f"{'plan s':>8} {'plan/meas':>9}"]
    for name, r in fig["stages"].items():
        lines.append(f"{name:<22} {r['wall_s']:8.1f} {r['tokens']:9d} {r['peak_rss_mib']:9.0f} {r['irreducible_s']:9.1f} "
                     f"{r['over_irreducible'] or float('nan'):9.2f} {r['plan_s'] or float('nan'):8.1f} "
                     f"{r['plan_over_measured'] or float('nan'):9.2f}")
    return "\n".join(lines)


STEPS = {"build": step_build, "bare": step_bare, "plan": step_plan}


def child(step: str, params: dict) -> dict:
    cmd = child_cmd(__file__, step, params)
    out, proc = run_child(cmd, TAG, step, pass_stderr=True)
    return {**out, "process": proc}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 layers, vocabulary 32000, the QUICK settings")
    ap.add_argument("--layers", type=int, default=None, help="layers instead of 24 (2 with --quick)")
    ap.add_argument("--intermediate", type=int, default=None, help="MLP width instead of 4864")
    ap.add_argument("--vocab", type=int, default=None, help="vocabulary instead of 151936 (32000 with --quick)")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "rwedit-bench-study"))
    ap.add_argument("--results", default=str(RESULTS))
    add_child_options(ap, STEPS)
    args = ap.parse_args(argv)
    if args.child:
        emit(TAG, STEPS[args.child](json.loads(args.child_args)))
        return 0
    config = dict(QWEN_05B, num_hidden_layers=args.layers or (2 if args.quick else 24),
                  vocab_size=args.vocab or (32000 if args.quick else QWEN_05B["vocab_size"]),
                  intermediate_size=args.intermediate or QWEN_05B["intermediate_size"])
    settings = QUICK if args.quick else LAPTOP
    sets = [f"{k}={json.dumps(v)}" for k, v in settings.items()]
    cache = pair_cache(config)
    if not (cache / "built.json").exists():
        print(f"building the pair in {cache} ...", flush=True)
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir(parents=True)
        child("build", {"cache": str(cache), "config": config})
    n_params = json.loads((cache / "built.json").read_text())["n_params"]
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    base, post, out, stats = cache / "base", cache / "post", work / "run", work / "stats-cache"
    res = {"machine": {"nproc": os.cpu_count(), "usable": len(os.sched_getaffinity(0)), "loadavg_start": os.getloadavg()},
           "date": time.strftime("%Y-%m-%d %H:%M"), "config": config, "n_params": n_params,
           "settings": settings, "quick": args.quick, "targets": TARGETS}
    print("bare forward rate ...", flush=True)
    res["bare"] = child("bare", {"base": str(base), "seconds": 10 if args.quick else 20})
    base_read, base_bytes = warm_read_s(base)
    post_read, post_bytes = warm_read_s(post)
    res["reads"] = {"base_s": base_read, "base_bytes": base_bytes, "pair_s": base_read + post_read,
                    "pair_bytes": base_bytes + post_bytes}
    print("plan ...", flush=True)
    res["plan"] = child("plan", {"recipe": str(RECIPE), "base": str(base), "post": str(post), "sets": sets,
                                 "out": str(out), "cache_dir": str(stats)})
    print(f"rwedit run ({'quick' if args.quick else 'laptop'} settings) ...", flush=True)
    res["run"] = run_study(base, post, sets, out, stats)
    res["machine"]["loadavg_end"] = os.getloadavg()
    res["figures"] = fig = figures(res["bare"], res["plan"], res["run"], res["reads"]["pair_s"], base_read, n_params,
                                   statistics_floor(stats, res["bare"]))
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    write_results(args.results, res)
    print("\n" + table(fig))
    print(f"\nbare model {res['bare']['tokens_per_s']:.0f} tokens/s ({res['bare'].get('body_tokens_per_s', 0):.0f} "
          f"without logits; {res['bare']['threads']} threads); run "
          f"{res['run']['wall_s']:.0f} s = {fig['run_over_irreducible']:.2f}x the irreducible {fig['irreducible_s']:.0f} s "
          f"(target <= {TARGETS['run_over_irreducible']}), {fig['run_over_floor']:.2f}x the floor with the statistics' "
          f"products and decompositions ({fig['floor_with_statistics_s']:.0f} s); peak RSS {res['run']['peak_rss_mib']:.0f} MiB = "
          f"{fig['peak_rss_over_fp32']:.2f}x the float32 model (target <= {TARGETS['peak_rss_over_fp32']}); plan's "
          f"worst stage off by {fig['plan_error'] if fig['plan_error'] is not None else float('nan'):.0%} (target <= 25%), "
          f"its total {fig['plan_total_over_measured']:.2f}x the run; load average {res['machine']['loadavg_start'][0]:.2f}"
          f" -> {res['machine']['loadavg_end'][0]:.2f} on {os.cpu_count()} cores -> {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
