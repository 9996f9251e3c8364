#!/usr/bin/env python
"""Benchmark the sources of a pair: a LoRA adapter as the post side, and several fine-tunes of one base.

On the synthetic ~1.1B bf16 Llama pair of ``bench_pair_pass.py`` (built there, reused here):

1. **LoRA as post** — a rank-16 adapter on every linear of every layer (q k v o up gate down; random
   factors, written as PEFT's ``adapter_model.safetensors`` with its ``adapter_config.json``). The RSF grid
   (k 1, 4, 16, 64; exact null; prediction and random subspaces) of (base, adapter) against the same grid
   of (base, full post checkpoint) — the cost of probing a merged model of the same size. Target: ≤ 0.5×
   the wall time; peak memory about one tensor plus the adapter.
2. **Many fine-tunes of one base** — the grid of two posts in one pass (``rsf_grid_posts``: what depends on the
   base alone done once for both: its prediction spectrum, each base block's read and conversion, each matrix
   side's stacked bases and sketch probe) against two separate pair passes: the full post and the adapter, and
   two full posts (a second one built here like the first, another seed). Floor of the two-full figure: one pass
   saves one pass's base-only work B (measured here: the prediction spectrum and a stream of the base with no post
   and no consumer) and nothing else, since each post's own work P — reading and converting its blocks, ΔW·B for
   every basis, the null's sketch or Gram — is the same either way, so (B + 2P) / (2B + 2P) = 1 − B / (two passes).
   By linearity ΔW·V = W_post·V − W_base·V, but W_post·V costs what ΔW·V costs: the base's projections, computed
   once, would save no multiply-add (and the difference of two large products would lose digits when ΔW ≪ W).
   The full post + adapter figure's floor is full / (full + LoRA) likewise: the adapter's pass is mostly base-only.

Each step runs in a fresh interpreter (its own peak RSS); every figure is a ratio against a baseline measured
in the same run, and the load average before and after is printed. Results: ``benchmarks/results/sources.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from _common import write_results
from _common import emit, measured
from _common import add_child_options, child_cmd
from _common import run_child as _run_child

HERE = Path(__file__).resolve().parent
PAIR = HERE / ".cache" / "llama-1.1b-pair"
ADAPTER = HERE / ".cache" / "llama-1.1b-lora16"
POST2 = HERE / ".cache" / "llama-1.1b-post2"
RESULTS = HERE / "results" / "sources.json"
TAG = "@@BENCH_SOURCES@@ "
RANK = 16


def build_adapter(base: Path, out: Path, rank: int = RANK) -> Path:
    """A PEFT-format LoRA adapter (random factors, every linear of every layer) for the synthetic base."""
    import torch
    from safetensors.torch import save_file

    from rwedit.checkpoints import Checkpoint

    if (out / "adapter_model.safetensors").exists():
        return out
    ckpt = Checkpoint.open(base)
    g = torch.Generator().manual_seed(0)
    tensors, modules = {}, set()
    for view in ckpt.layout.views([r for r in ckpt.layout.roles() if r != "unembed"]):
        d_out, d_in = ckpt.shape(view.param)
        name = view.module
        modules.add(name.rsplit(".", 1)[-1])
        tensors[f"base_model.model.{name}.lora_A.weight"] = (torch.randn(rank, d_in, generator=g) / d_in ** 0.5).to(torch.bfloat16)
        tensors[f"base_model.model.{name}.lora_B.weight"] = (torch.randn(d_out, rank, generator=g) * 1e-3).to(torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank, "lora_alpha": rank,
                                                         "target_modules": sorted(modules), "fan_in_fan_out": False}))
    return out


def build_second_post(base: Path, out: Path, seed: int = 1, scale: float = 1e-3) -> Path:
    """A second full fine-tune of the synthetic base, made as ``bench_pair_pass`` makes the first (base + scale·N(0,1)
    in bf16, another seed), tensor by tensor into ~0.8 GB shards; a marker written last says it is complete."""
    import shutil

    import torch
    from safetensors import safe_open

    import bench_pair_pass as bpp

    if (out / bpp.MARKER).exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    shutil.copy(base / "config.json", out / "config.json")
    where = json.loads((base / "model.safetensors.index.json").read_text())["weight_map"]
    specs = []
    for f in sorted(set(where.values())):
        with safe_open(base / f, "pt") as h:
            specs += [(n, tuple(h.get_slice(n).get_shape())) for n in h.keys()]
    writer = bpp._ShardWriter(out, bpp.plan_shards(specs, int(0.8e9)))
    g = torch.Generator()
    for i, (name, _) in enumerate(specs):
        g.manual_seed(seed * 1_000_003 + i)
        with safe_open(base / where[name], "pt") as h:
            w = h.get_tensor(name)
        writer.add(name, torch.randn(w.shape, generator=g).mul_(scale).add_(w.float()).to(torch.bfloat16))
    writer.finish()
    (out / bpp.MARKER).write_text(json.dumps({"seed": seed, "scale": scale}) + "\n")
    return out


def step_grid(p: dict) -> dict:
    """The RSF grid of (base, each post), in one pass over the base when there are several posts."""
    from rwedit.checkpoints import Checkpoint, CheckpointPair
    from rwedit.probes.grid import GridSettings, rsf_grid_posts

    settings = GridSettings(subspaces=("prediction", "random"))
    base = Checkpoint.open(p["base"])
    posts = {Path(x).name: CheckpointPair(base, x).post for x in p["posts"]}
    rows, figures = measured(lambda: sum(1 for _ in rsf_grid_posts(base, posts, None, settings)))
    return {"rows": rows, **figures}


def step_base_only(p: dict) -> dict:
    """The work of a grid pass that depends on the base alone: its prediction spectrum and its stream (every
    block read and converted, no post, no consumer) — what one pass over several posts does once."""
    from rwedit.checkpoints import Checkpoint
    from rwedit.probes.grid import GridSettings, prediction_from_pair
    from rwedit.stream import stream_pair

    settings = GridSettings(subspaces=("prediction", "random"))
    base = Checkpoint.open(p["base"])
    views = base.layout.views(base.layout.roles())
    _, pred = measured(lambda: prediction_from_pair(base, settings.prediction_gain))
    n, stream = measured(lambda: sum(1 for _ in stream_pair(base, [], views, lambda v: [], dtype=settings.dtype)))
    return {"views": n, "prediction_s": pred["wall_s"], "stream_s": stream["wall_s"],
            "wall_s": pred["wall_s"] + stream["wall_s"], "cpu_s": pred["cpu_s"] + stream["cpu_s"], "peak_anon_kb": stream["peak_anon_kb"]}


STEPS = {"grid": step_grid, "base_only": step_base_only}


def run_child(step: str, params: dict) -> dict:
    cmd = child_cmd(__file__, step, params)
    out, proc = _run_child(cmd, TAG, step)
    return {**out, "process": proc}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_child_options(ap, STEPS)
    args = ap.parse_args(argv)
    if args.child:
        emit(TAG, STEPS[args.child](json.loads(args.child_args)))
        return 0
    sys.path.insert(0, str(HERE))
    import bench_pair_pass as bpp

    base, post = bpp.build_pair(PAIR, 0, 1.0, 0.8, 1e-3)
    adapter = build_adapter(base, ADAPTER)
    post2 = build_second_post(base, POST2)
    res = {"machine": {"nproc": os.cpu_count(), "loadavg_start": os.getloadavg(),
                       "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}, "rank": RANK,
           "date": time.strftime("%Y-%m-%d %H:%M")}
    bpp.step_read(base, post), bpp.step_read(post2, adapter)  # a warm page cache for every step (not timed)
    steps = {"full_post": ("grid", [post]), "lora_post": ("grid", [adapter]), "two_posts_one_pass": ("grid", [post, adapter]),
             "full_post2": ("grid", [post2]), "two_full_one_pass": ("grid", [post, post2]), "base_only": ("base_only", [])}
    for round_ in (1, 2):  # every step twice, the faster kept: the first child of a run ran ~1.5x slow (idle, warm cache)
        for key, (step, posts) in steps.items():
            print(f"{key} (round {round_}) ...", flush=True)
            got = run_child(step, {"base": str(base), "posts": [str(x) for x in posts]})
            res[key] = got if key not in res or got["wall_s"] < res[key]["wall_s"] else res[key]
    res["machine"]["loadavg_end"] = os.getloadavg()
    f, lo, two = res["full_post"], res["lora_post"], res["two_posts_one_pass"]
    f2, both, shared = res["full_post2"], res["two_full_one_pass"], res["base_only"]
    separate = f["wall_s"] + f2["wall_s"]
    res["ratios"] = {
        "lora_over_full_wall": lo["wall_s"] / f["wall_s"],
        "lora_peak_anon_mb": lo["peak_anon_kb"] / 1024, "full_peak_anon_mb": f["peak_anon_kb"] / 1024,
        "two_in_one_pass_over_two_separate_wall": two["wall_s"] / (f["wall_s"] + lo["wall_s"]),
        "two_full_in_one_pass_over_two_separate_wall": both["wall_s"] / separate,
        "two_full_in_one_pass_over_two_separate_cpu": both["cpu_s"] / (f["cpu_s"] + f2["cpu_s"]),
        # one pass saves at most the base-only work of one of the two passes (the prediction spectrum, the
        # base's read and conversion); what each post's delta costs (its read, conversion, projections, null
        # sketch or Gram) is paid once per post either way
        "two_full_floor": 1 - shared["wall_s"] / separate,
        "full_lora_floor": 1 - shared["wall_s"] / (f["wall_s"] + lo["wall_s"]),
        "two_full_floor_cpu": 1 - shared["cpu_s"] / (f["cpu_s"] + f2["cpu_s"]),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_results(RESULTS, res)
    r = res["ratios"]
    print(f"\nLoRA (rank {RANK}, every linear) as post: {lo['wall_s']:.1f} s vs full post {f['wall_s']:.1f} s = "
          f"{r['lora_over_full_wall']:.2f}x (target <= 0.5x: {'met' if r['lora_over_full_wall'] <= 0.5 else 'NOT met'}); "
          f"peak anon {r['lora_peak_anon_mb']:.0f} MB vs {r['full_peak_anon_mb']:.0f} MB")
    print(f"full post + LoRA post in one pass: {two['wall_s']:.1f} s vs two separate passes "
          f"{f['wall_s'] + lo['wall_s']:.1f} s = {r['two_in_one_pass_over_two_separate_wall']:.2f}x")
    print(f"two full posts in one pass: {both['wall_s']:.1f} s vs two separate passes {separate:.1f} s = "
          f"{r['two_full_in_one_pass_over_two_separate_wall']:.2f}x (CPU time "
          f"{r['two_full_in_one_pass_over_two_separate_cpu']:.2f}x, floor {r['two_full_floor_cpu']:.2f}x); floor {r['two_full_floor']:.2f}x (the base-only "
          f"work, {shared['wall_s']:.1f} s: prediction spectrum {shared['prediction_s']:.1f} s, base stream "
          f"{shared['stream_s']:.1f} s, saved once)")
    print(f"load average before {res['machine']['loadavg_start']}, after {res['machine']['loadavg_end']} "
          f"({os.cpu_count()} cores); wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
